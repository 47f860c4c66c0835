"""Referring video object segmentation (paper §3.4, Table 15): a sentence picks out an object of a clip; the
model (:class:`~unireplknet.models.referring.ReferringSegmenter`) segments it in every frame, fusing the sentence
into UniRepLKNet's frame features by the asymmetric large-kernel convolution or by cross-attention
(``task_args.fusion``).

``data``: ``moving_shapes`` (built-in, :class:`~unireplknet.data.referring.MovingShapes`) or a folder in the
Ref-YouTube-VOS / Refer-DAVIS17 layout (:class:`~unireplknet.data.referring.ReferVOS`: ``train/`` and ``valid/``,
an optional ``test/``). Metrics (DAVIS): J (region IoU), F (boundary F-measure) and J&F, in percent, averaged over
each expression's frames and then over the expressions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unireplknet.engine.config import TrainConfig
from unireplknet.engine.distributed import reduce_tensor
from unireplknet.engine.loops import eval_batches
from unireplknet.engine.task import Criterion, EvalContext, Request, Task, TaskData
from unireplknet.errors import UserError
from unireplknet.tasks import register_task
from unireplknet.tasks.classification import backbone_kwargs
from unireplknet.utils.typed import check

log = logging.getLogger(__name__)

BOUND_TH = 0.008  # DAVIS: boundary tolerance as a fraction of the image diagonal


# -- the DAVIS measures -----------------------------------------------------------------------------------------------
def region_similarity(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """J: IoU of boolean masks (N, H, W) -> (N,); 1 where both are empty."""
    inter = (pred & gt).flatten(1).sum(1).double()
    union = (pred | gt).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def boundary(mask: torch.Tensor) -> torch.Tensor:
    """The contour of boolean masks (N, H, W): mask pixels with a 4-neighbour outside the mask (the image border
    does not count as outside)."""
    m = F.pad(mask[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    interior = m[:, :-2, 1:-1] * m[:, 2:, 1:-1] * m[:, 1:-1, :-2] * m[:, 1:-1, 2:]
    return mask & (interior < 0.5)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean masks (N, H, W) dilated by a disc of ``radius`` pixels (x² + y² <= r²)."""
    r = torch.arange(-radius, radius + 1, device=mask.device)
    disc = ((r[:, None] ** 2 + r[None] ** 2) <= radius**2).float()[None, None]
    return F.conv2d(mask[:, None].float(), disc, padding=radius)[:, 0] > 0.5


def boundary_f(pred: torch.Tensor, gt: torch.Tensor, bound_th: float = BOUND_TH) -> torch.Tensor:
    """F: the DAVIS contour accuracy of boolean masks (N, H, W) -> (N,).

    Contour pixels of each mask match when the other's contour lies within ``ceil(bound_th · diagonal)`` pixels
    (``bound_th`` >= 1: that many pixels); precision = matched predicted contour / predicted contour, recall =
    matched true contour / true contour, F = 2PR / (P + R). Both contours empty: 1; one empty: 0.
    """
    H, W = gt.shape[-2:]
    radius = int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(H, W))
    bp, bg = boundary(pred), boundary(gt)
    n_p, n_g = bp.flatten(1).sum(1).double(), bg.flatten(1).sum(1).double()
    precision = (bp & dilate(bg, radius)).flatten(1).sum(1) / n_p.clamp(min=1)
    recall = (bg & dilate(bp, radius)).flatten(1).sum(1) / n_g.clamp(min=1)
    f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                    torch.zeros_like(precision))
    return torch.where((n_p == 0) & (n_g == 0), torch.ones_like(f), torch.where((n_p == 0) | (n_g == 0),
                                                                                   torch.zeros_like(f), f))


def mask_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Binary cross-entropy + ``dice_weight`` · soft Dice loss per frame, averaged over the valid frames:
    logits (B, T, H, W), masks (B, T, H, W) {0, 1}, valid (B, T) bool."""
    m, w = masks.float(), valid.float()
    bce = F.binary_cross_entropy_with_logits(logits, m, reduction="none").mean((2, 3))
    p = logits.sigmoid()
    dice = 1 - (2 * (p * m).sum((2, 3)) + 1) / (p.sum((2, 3)) + m.sum((2, 3)) + 1)
    return ((bce + dice_weight * dice) * w).sum() / w.sum().clamp(min=1)


# -- the task ---------------------------------------------------------------------------------------------------------
@dataclass
class ReferringArgs:
    fusion: Literal["asymmetric", "cross_attention"] = "asymmetric"
    text_encoder: str = "words"  # "words": a small transformer from scratch; else a Hugging Face model name / folder
    dim: int = 64  # width of the fusion, the text features and the decoder
    text_depth: int = 2  # "words" encoder: layers and heads
    text_heads: int = 4
    max_len: int = 16  # tokens per sentence (padded); the asymmetric kernel is their most square grid (16: 4x4)
    context: int = 1  # each frame sees its neighbours t-context..t+context
    num_frames: int = 4  # frames per training clip and evaluation window
    frame_size: int = 64  # frames are resized to frame_size² (masks too; J and F are measured at this size)
    expression_type: Literal["all", "full_video", "first_frame"] = "all"  # Table 15's two settings
    dice_weight: float = 1.0
    train_clips: int = 2048  # moving_shapes: fresh training clips per epoch, fixed val / test clips
    val_clips: int = 256
    test_clips: int = 512

    def __post_init__(self) -> None:
        check([(self.dim >= 8 and self.max_len >= 1 and self.context >= 0 and self.num_frames >= 1,
                "dim must be >= 8, max_len and num_frames >= 1, context >= 0"),
               (self.frame_size >= 32, "frame_size must be at least 32"),
               (min(self.train_clips, self.val_clips, self.test_clips) >= 1, "the clip counts must be >= 1")])


@register_task
class ReferringTask(Task):
    name = "referring"
    Args = ReferringArgs
    default_config = "referring_default"
    builtin_data = ("moving_shapes",)
    primary_metric = "jf"
    mode = "max"
    curves: ClassVar[dict[str, str]] = {"j_and_f": "jf"}

    # -- data and model --------------------------------------------------------------------------------------------
    def text_spec(self, args: ReferringArgs, vocab: list[str]) -> dict[str, Any]:
        """``meta['referring']['text']``: what builds the text encoder and its tokenizer."""
        if args.text_encoder == "words":
            return {"name": "words", "vocab": vocab, "dim": args.dim, "depth": args.text_depth,
                    "heads": args.text_heads, "max_len": args.max_len}
        from unireplknet.modalities.text import _transformers

        try:
            config = _transformers().AutoConfig.from_pretrained(args.text_encoder).to_dict()
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load the Hugging Face model config '{args.text_encoder}' "
                            f"({str(err).splitlines()[0]}); check task_args.text_encoder") from None
        return {"name": args.text_encoder, "dim": args.dim, "max_len": args.max_len, "config": config}

    def build_data(self, cfg: TrainConfig, args: ReferringArgs, text: Mapping[str, Any] | None = None) -> TaskData:
        """The splits, each tokenizing with the text encoder's tokenizer (``text``: a checkpoint's, else new)."""
        from unireplknet.data.referring import MovingShapes, ReferVOS, words
        from unireplknet.modalities.text import tokenizer_for

        T, S, kind = args.num_frames, args.frame_size, args.expression_type
        if cfg.data in self.builtin_data:
            kw = {"num_frames": T, "size": S, "expression_type": kind, "mean": cfg.mean, "std": cfg.std}
            sets = [MovingShapes("train", args.train_clips, **kw), MovingShapes("val", args.val_clips, **kw),
                    MovingShapes("test", args.test_clips, **kw)]
            vocab = MovingShapes.vocabulary()
        else:
            from unireplknet.data.datasets import data_folder

            root = data_folder(cfg.data or "", "train/ and valid/ in the Ref-YouTube-VOS layout, or one of: "
                                               + ", ".join(self.builtin_data))
            val = next((s for s in ("valid", "val") if (root / s).is_dir()), None)
            if not (root / "train").is_dir() or val is None:
                raise UserError(f"'{root}' needs train/ and valid/ (Ref-YouTube-VOS layout: <split>/JPEGImages, "
                                f"<split>/Annotations, meta_expressions/<split>/meta_expressions.json)")
            kw = {"num_frames": T, "size": S, "expression_type": kind, "mean": cfg.mean, "std": cfg.std}
            sets = [ReferVOS(root, "train", train=True, **kw), ReferVOS(root, val, **kw)]
            sets.append(ReferVOS(root, "test", **kw) if (root / "test").is_dir() else None)
            vocab = sorted({w for e in sets[0].expressions for w in words(e.text)})
        spec = dict(text) if text is not None else self.text_spec(args, vocab)
        tokenize = tokenizer_for(spec)
        for s in sets:
            if s is not None:
                s.tokenize = tokenize
        return TaskData(*sets, info={"text": spec})

    def checkpoint_data(self, meta: Mapping[str, Any], cfg: TrainConfig, data: str | None) -> tuple[TaskData, Any]:
        """A checkpoint's splits, tokenized with its own vocabulary."""
        import dataclasses

        if data is not None:
            cfg = dataclasses.replace(cfg, data=data)
        args = self.parse_args(meta.get("task_args") or {})
        return self.build_data(cfg, args, meta["referring"]["text"]), args

    def resume_mismatch(self, meta: Mapping[str, Any], data: TaskData) -> str | None:
        if meta["referring"]["text"] != data.info["text"]:
            return "its text encoder or vocabulary differs from the one this data gives"
        return None

    def model_meta(self, cfg: TrainConfig, args: ReferringArgs, data: TaskData) -> dict[str, Any]:
        backbone = {k: v for k, v in backbone_kwargs(cfg, 0, 3).items() if k not in ("num_classes", "in_chans")}
        return {"model": None, "builder": "referring",
                "referring": {"backbone": backbone, "text": data.info["text"], "fusion": args.fusion,
                              "dim": args.dim, "context": args.context},
                "input_size": [args.num_frames, 3, args.frame_size, args.frame_size],
                "mean": list(cfg.mean), "std": list(cfg.std)}

    def build_model(self, cfg: TrainConfig, args: ReferringArgs, data: TaskData) -> nn.Module:
        from unireplknet.models import load_checkpoint
        from unireplknet.models.referring import ReferringSegmenter

        try:
            model = ReferringSegmenter(**self.model_meta(cfg, args, data)["referring"], text_pretrained=True,
                                       drop_path_rate=cfg.drop_path, layer_scale_init_value=cfg.layer_scale_init_value)
        except (TypeError, ValueError) as err:
            raise UserError(f"bad model settings (arch/task_args): {err}") from None
        if cfg.finetune:
            load_checkpoint(model, cfg.finetune, strict=True)
        return model

    def model_label(self, cfg: TrainConfig) -> str:
        return f"{super().model_label(cfg)} + {cfg.task_args.get('fusion', 'asymmetric')} text fusion"

    def criterion(self, cfg: TrainConfig, args: ReferringArgs, data: TaskData) -> Criterion:
        def loss(model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
            masks, valid, _ = targets
            return mask_loss(model(inputs), masks, valid, args.dice_weight)

        return loss

    # -- metrics ---------------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader: Any, ctx: EvalContext) -> dict[str, Any]:
        """J, F and J&F (percent): per expression the mean over its valid frames, then the mean over expressions;
        with ``ctx.detailed`` also the per-expression table."""
        dataset = loader.dataset
        n = dataset.num_expressions
        sums = torch.zeros(3, n, dtype=torch.float64, device=ctx.device)  # J, F, frames per expression
        loss = torch.zeros(2, dtype=torch.float64, device=ctx.device)
        for logits, _, (masks, valid, idx) in eval_batches(model, loader, ctx):
            logits = logits.float()
            B, T = valid.shape
            pred, gt = (logits > 0).flatten(0, 1), (masks > 0).flatten(0, 1)
            w = valid.double()
            j = region_similarity(pred, gt).view(B, T)
            f = boundary_f(pred, gt).view(B, T)
            for row, values in enumerate((j * w, f * w, w)):
                sums[row].index_add_(0, idx, values.sum(1))
            loss += torch.stack([mask_loss(logits, masks, valid, 1.0).double() * B, torch.tensor(B, device=ctx.device)])
        if ctx.distributed:
            sums, loss = reduce_tensor(sums), reduce_tensor(loss)
        seen = sums[2] > 0
        per_j, per_f = (sums[:2, seen] / sums[2, seen]).cpu()
        j, f = (float(per_j.mean()) if len(per_j) else 0.0), (float(per_f.mean()) if len(per_f) else 0.0)
        out = {"j": 100 * j, "f": 100 * f, "jf": 50 * (j + f), "loss": float(loss[0] / loss[1].clamp(min=1)),
               "expressions": int(seen.sum()), "frames": int(sums[2].sum())}
        if ctx.detailed:
            ids = seen.nonzero()[:, 0].tolist()
            out["per_expression"] = [{"expression": dataset.text_of(i), "j": round(100 * float(a), 2),
                                      "f": round(100 * float(b), 2)} for i, a, b in zip(ids, per_j, per_f)]
        return out

    def report_figures(self, details: Mapping[str, Any], out_dir: Path, data: TaskData) -> dict[str, Path]:
        """``per_expression.csv``: J and F of every held-out expression."""
        import csv
        import io

        from unireplknet.utils.atomic import atomic_write_text

        rows = details.get("per_expression")
        if not rows:
            return {}
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["expression", "j", "f"])
        writer.writeheader()
        writer.writerows(rows)
        path = out_dir / "per_expression.csv"
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(buf.getvalue(), path)
        return {"per_expression": path}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        return [f"  held-out ({summary.get('test_split', 'val')}): J&F {summary['test_jf']:.2f}  "
                f"J {summary['test_j']:.2f}  F {summary['test_f']:.2f}  ({summary['test_expressions']} expressions)"]

    def export_blocker(self, meta: Mapping[str, Any]) -> str | None:
        return "it takes two inputs, a clip and a sentence's tokens; ONNX export here takes one input tensor"

    # -- predict ---------------------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, meta: Mapping[str, Any], request: Request) -> dict[str, Any]:
        """Masks of the object ``request.text`` names in each folder of frames: one PNG per frame (255 = the
        object) at the frame's size under ``<output>/<folder>/``, and ``<folder>_strip.png``, the frames side by
        side with the mask in red."""
        from unireplknet.data.datasets import IMG_EXTENSIONS
        from unireplknet.data.referring import read_frames
        from unireplknet.modalities.text import tokenizer_for

        if not (request.text or "").strip():
            raise UserError("pass the sentence that names the object: --text \"the small red square moving left\"")
        if request.output is None:
            raise UserError("referring predict writes mask images: pass --output DIR")
        self.check_img_size(request.img_size)
        tokens = tokenizer_for(meta["referring"]["text"])(request.text)[None].to(request.device)
        size, radius = int(meta["input_size"][-1]), int(meta["referring"].get("context", 1))
        model.eval().to(request.device)
        results = []
        for text in request.inputs:
            folder = Path(text)
            if not folder.is_dir():
                raise UserError(f"'{folder}' is not a folder of frames; pass one folder per video")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
            if not files:
                raise UserError(f"'{folder}' holds no frame images ({', '.join(IMG_EXTENSIONS)})")
            frames = read_frames(files, size, meta["mean"], meta["std"])
            logits = self._video_logits(model, frames, tokens, radius, request)
            results.append(self._write_masks(folder, files, logits, request.output))
        return {"text": request.text, "videos": results}

    @torch.no_grad()
    def _video_logits(self, model: nn.Module, frames: torch.Tensor, tokens: torch.Tensor, radius: int,
                      request: Request) -> torch.Tensor:
        """(N, 3, S, S) frames -> (N, S, S) logits, ``batch_size`` frames at a time with ``radius`` frames of
        context on each side (so every frame sees the same neighbours as in one pass)."""
        out = []
        n, step = len(frames), max(1, request.batch_size)
        for start in range(0, n, step):
            lo, hi = max(0, start - radius), min(n, start + step + radius)
            chunk = frames[lo:hi].to(request.device)[None]
            out.append(model((chunk, tokens))[0, start - lo: start - lo + min(step, n - start)].float().cpu())
        return torch.cat(out)

    def _write_masks(self, folder: Path, files: list[Path], logits: torch.Tensor, output: Path) -> dict[str, Any]:
        from PIL import Image

        from unireplknet.utils.atomic import atomic_file

        out_dir = output / folder.name
        out_dir.mkdir(parents=True, exist_ok=True)
        strip, areas = [], []
        for path, logit in zip(files, logits):
            with Image.open(path) as im:
                frame = im.convert("RGB")
            w, h = frame.size
            mask = F.interpolate(logit[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0] > 0
            png = Image.fromarray(mask.numpy().astype(np.uint8) * 255)
            with atomic_file(out_dir / f"{path.stem}.png") as f:
                png.save(f, format="PNG")
            areas.append(round(float(mask.float().mean()), 4))
            scale = 128 / h
            small = frame.resize((max(1, round(w * scale)), 128), Image.BILINEAR)
            red = Image.new("RGB", small.size, (255, 0, 0))
            strip.append(Image.composite(Image.blend(small, red, 0.5), small,
                                         png.resize(small.size, Image.NEAREST)))
        sheet = Image.new("RGB", (sum(s.width for s in strip), 128))
        x = 0
        for s in strip:
            sheet.paste(s, (x, 0))
            x += s.width
        strip_path = output / f"{folder.name}_strip.png"
        with atomic_file(strip_path) as f:
            sheet.save(f, format="PNG")
        return {"frames": str(folder), "masks": str(out_dir), "strip": str(strip_path), "mask_area": areas}
