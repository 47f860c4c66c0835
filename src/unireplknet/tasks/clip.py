"""Image–text contrastive training (CLIP; paper §4.3, Table 13) with a UniRepLKNet image tower: open_clip's CLIP
(:class:`unireplknet.models.clip.CLIPModel`), open_clip's ``ClipLoss`` and BPE tokenizer, trained by the engine.

A batch is ``(images (N, 3, S, S), {"text": token ids (N, L), "label": (N,)})``. Data: the built-in generated
shapes with captions (``--data shape_captions``, the default; whole colour–shape classes held out for zero-shot
evaluation), a folder of images with same-stem ``.txt`` captions, or OpenCLIP's CSV. Metrics: zero-shot top-1
over the split's classes (prompt ensemble), image→text and text→image recall@1/5 (percent), the loss.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unireplknet.data.captions import HELD_OUT, NO_CLASS, TEMPLATES, class_prompts
from unireplknet.data.datasets import IMG_EXTENSIONS
from unireplknet.engine.config import TrainConfig
from unireplknet.engine.distributed import all_reduce_sum
from unireplknet.engine.loops import eval_batches
from unireplknet.engine.task import Criterion, EvalContext, Request, Task, TaskData
from unireplknet.errors import UserError
from unireplknet.tasks import register_task
from unireplknet.tasks.classification import collect_files, load_image
from unireplknet.utils.typed import check

log = logging.getLogger(__name__)

BUILTIN = "shape_captions"


@dataclass
class ClipArgs:
    embed_dim: int | None = None  # None: the OpenCLIP config of the tower's size (UniRepLKNet-A for other towers)
    text_width: int | None = None
    text_heads: int | None = None
    text_layers: int | None = None
    context_length: int = 77  # tokens per caption (open_clip's BPE tokenizer; longer captions are cut)
    train_samples: int = 20000  # built-in data: generated training images (1-2 groups of shapes each)
    val_samples: int = 400  # ... validation images of the training classes
    test_samples: int = 800  # ... held-out images of the held-out classes
    shape_twins: bool = False  # built-in training data: each sample is a pair differing in one shape (2 images)
    held_out: list[str] = field(default_factory=lambda: list(HELD_OUT))  # zero-shot classes "<colour> <shape>"
    val_data: str | None = None  # real data: the validation CSV / folder (None: val_fraction of the data)
    val_fraction: float = 0.1
    csv_separator: str = "\t"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"

    def __post_init__(self) -> None:
        check([(self.context_length >= 4, "context_length must be >= 4"),
               (min(self.train_samples, self.val_samples, self.test_samples) >= 1, "sample counts must be >= 1"),
               (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
               (all(v is None or v >= 1 for v in (self.embed_dim, self.text_width, self.text_heads,
                                                   self.text_layers)), "tower sizes must be >= 1")])


def clip_config(cfg: TrainConfig, args: ClipArgs) -> dict[str, Any]:
    """The OpenCLIP model config of a run: the tower ``cfg.model`` (a UniRepLKNet variant or any timm model)
    at ``cfg.img_size``, the text tower and embedding size of the variant's config unless ``args`` set them."""
    from unireplknet.models.clip import open_clip_config
    from unireplknet.models.variants import VARIANTS

    tower = cfg.model or "unireplknet_a"
    base = open_clip_config(f"UniRepLKNet-{tower.split('_', 1)[1].upper()}" if tower in VARIANTS
                            else "UniRepLKNet-A")
    text = base["text_cfg"]
    text.update({k: v for k, v in {"width": args.text_width, "heads": args.text_heads, "layers": args.text_layers,
                                   "context_length": args.context_length}.items() if v is not None})
    vision = {**base["vision_cfg"], "timm_model_name": tower, "image_size": cfg.img_size,
              "timm_drop_path": cfg.drop_path}
    return {"embed_dim": args.embed_dim or base["embed_dim"], "vision_cfg": vision, "text_cfg": text}


def tokenizer(context_length: int) -> Any:
    """open_clip's BPE tokenizer (its vocabulary ships with the package: no download)."""
    from open_clip import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def image_transform(size: int, mean: Sequence[float], std: Sequence[float], train: bool = False) -> Any:
    """PIL image -> normalized (3, size, size): OpenCLIP's resize + center crop (train: random resized crop of
    0.9-1 of the area)."""
    from open_clip import image_transform as oc_transform

    return oc_transform(size, is_train=train, mean=tuple(mean), std=tuple(std))


@torch.no_grad()
def retrieval_sums(query: torch.Tensor, gallery: torch.Tensor, ids: torch.Tensor, scale: float,
                   ks: Sequence[int] = (1, 5), chunk: int = 1024) -> list[float]:
    """Query i (N, E) against the gallery (N, E) whose item i is its pair: [cross-entropy sum of the pairs under
    ``scale`` x cosine, then per k the number of queries whose k most similar items include one with the query's
    id] — ids equal for equal captions, which count as the same item (generated captions repeat)."""
    sums = [0.0] * (1 + len(ks))
    k_max = min(max(ks), len(gallery))
    for start in range(0, len(query), chunk):
        sim = query[start:start + chunk] @ gallery.T
        sums[0] += float(F.cross_entropy(scale * sim, torch.arange(start, start + len(sim), device=sim.device),
                                         reduction="sum"))
        match = ids[sim.topk(k_max, dim=1).indices] == ids[start:start + chunk, None]
        for i, k in enumerate(ks):
            sums[1 + i] += float(match[:, :k].any(dim=1).sum())
    return sums


def logit_scale(model: nn.Module) -> float:
    """exp(learned logit scale), clamped as in training, of the CLIP model inside any evaluation wrapper (the
    deploy check, DDP, EMA)."""
    from unireplknet.models.clip import MAX_LOGIT_SCALE, CLIPModel

    clip = next(m for m in model.modules() if isinstance(m, CLIPModel))
    return float(clip.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))


@torch.no_grad()
def class_embeddings(model: nn.Module, prompts: Sequence[Sequence[str]], tokenize: Any,
                     device: torch.device) -> torch.Tensor:
    """Zero-shot classifier (C, E): each class's prompt embeddings averaged and re-normalized (CLIP's ensemble)."""
    tokens = tokenize([p for ps in prompts for p in ps]).to(device)
    emb = model(None, tokens).float().view(len(prompts), len(prompts[0]), -1).mean(1)
    return F.normalize(emb, dim=-1)


@register_task
class ClipTask(Task):
    name = "clip"
    Args = ClipArgs
    default_config = "clip_default"
    builtin_data = (BUILTIN,)
    primary_metric = "mean_r1"  # (image->text R@1 + text->image R@1) / 2: real captions have no zero-shot classes
    mode = "max"
    curves: ClassVar[dict[str, str]] = {"zeroshot": "zeroshot_acc1", "recall": "mean_r1"}

    # -- building a run ------------------------------------------------------------------------------------------
    def build_data(self, cfg: TrainConfig, args: ClipArgs) -> TaskData:
        from torchvision import transforms

        from unireplknet.data.captions import CaptionFiles, ShapeCaptions, all_classes, check_classes, read_captions

        tok = tokenizer(args.context_length)
        if cfg.data in (None, BUILTIN):
            held = check_classes(args.held_out)
            seen = [c for c in all_classes() if c not in held]
            tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)])
            make = lambda n, classes, seed, groups, stream, twins=False: ShapeCaptions(  # noqa: E731
                n, classes, cfg.img_size, seed, tok, tf, max_groups=groups, stream=stream, twins=twins)
            return TaskData(make(args.train_samples, seen, cfg.seed, 2, 0, args.shape_twins),
                            make(args.val_samples, seen, 0, 1, 1),
                            make(args.test_samples, held, 0, 1, 2), {"class_names": all_classes(), "held_out": held})
        csv = (args.csv_separator, args.csv_img_key, args.csv_caption_key)
        items = read_captions(cfg.data, *csv)
        if args.val_data:
            train, val = items, read_captions(args.val_data, *csv)
        else:  # a fixed split (the same for every run seed, so eval finds the same held-out items)
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
            n_val = max(1, round(args.val_fraction * len(items)))
            if len(items) - n_val < 2:
                raise UserError(f"'{cfg.data}' has {len(items)} captioned images; CLIP training needs more")
            train, val = [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]
        tf = lambda train: image_transform(cfg.img_size, cfg.mean, cfg.std, train)  # noqa: E731
        return TaskData(CaptionFiles(train, tok, tf(True), str(cfg.data)),
                        CaptionFiles(val, tok, tf(False), str(args.val_data or cfg.data)), None,
                        {"class_names": [], "held_out": []})

    def model_meta(self, cfg: TrainConfig, args: ClipArgs, data: TaskData) -> dict[str, Any]:
        return {"builder": "clip", "model": cfg.model or "unireplknet_a", "clip_cfg": clip_config(cfg, args),
                "tower_kwargs": cfg.arch, "input_size": [3, cfg.img_size, cfg.img_size], "mean": list(cfg.mean),
                "std": list(cfg.std), "class_names": data.info["class_names"], "held_out": data.info["held_out"]}

    def build_model(self, cfg: TrainConfig, args: ClipArgs, data: TaskData) -> nn.Module:
        from unireplknet.models import load_checkpoint
        from unireplknet.models.clip import build_clip

        if cfg.pretrained:
            raise UserError("clip trains its towers from scratch; to start from a clip checkpoint set finetune")
        meta = self.model_meta(cfg, args, data)
        try:
            model = build_clip(meta["clip_cfg"], meta["tower_kwargs"])
        except (TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"cannot build the CLIP model ({err}); check model, arch and task_args") from None
        if cfg.finetune:
            load_checkpoint(model, cfg.finetune, strict=True)
        return model

    def criterion(self, cfg: TrainConfig, args: ClipArgs, data: TaskData) -> Criterion:
        """open_clip's ClipLoss (symmetric InfoNCE), over the global batch under DDP."""
        import torch.distributed as dist
        from open_clip import ClipLoss

        ddp = dist.is_available() and dist.is_initialized()
        loss = ClipLoss(gather_with_grad=ddp, rank=dist.get_rank() if ddp else 0,
                        world_size=dist.get_world_size() if ddp else 1)
        def pairs(model: nn.Module, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
            if images.dim() == 5:  # shape twins (N, 2, 3, S, S): 2N images and captions
                images, targets = images.flatten(0, 1), {"text": targets["text"].flatten(0, 1)}
            return loss(*model(images, targets["text"]))

        return pairs

    def model_label(self, cfg: TrainConfig) -> str:
        return f"CLIP with a {cfg.model or 'unireplknet_a'} image tower"

    # -- metrics -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, ctx: EvalContext) -> dict[str, Any]:
        """Over the whole split (each process's shard under DDP): zero-shot top-1 over the split's classes,
        image->text and text->image recall@1/5, and the symmetric contrastive loss of every pair against every
        other item (so it does not depend on the batch size)."""
        dataset = loader.dataset
        classifier = (class_embeddings(model, dataset.prompts, dataset.tokenizer, ctx.device)
                      if dataset.class_names else None)
        images, texts, tokens, labels = [], [], [], []
        for img, _, targets in eval_batches(model, loader, ctx):
            images.append(img.float())
            texts.append(model(None, targets["text"]).float())
            tokens.append(targets["text"])
            labels.append(targets["label"])
        sums = [0.0] * 8  # samples, zero-shot hits, labelled samples, loss, i2t@1, i2t@5, t2i@1, t2i@5
        if images:
            img, txt, label = torch.cat(images), torch.cat(texts), torch.cat(labels)
            ids = torch.unique(torch.cat(tokens), dim=0, return_inverse=True)[1]
            scale = logit_scale(model)
            i2t, t2i = retrieval_sums(img, txt, ids, scale), retrieval_sums(txt, img, ids, scale)
            sums[0], sums[3:] = float(len(img)), [(i2t[0] + t2i[0]) / 2, *i2t[1:], *t2i[1:]]
            if classifier is not None:
                labelled = label != NO_CLASS
                sums[1] = float(((img[labelled] @ classifier.T).argmax(1) == label[labelled]).sum())
                sums[2] = float(labelled.sum())
        if ctx.distributed:
            sums = all_reduce_sum(sums, ctx.device)
        n = max(sums[0], 1.0)
        out = {"loss": sums[3] / n, "i2t_r1": 100 * sums[4] / n, "i2t_r5": 100 * sums[5] / n,
               "t2i_r1": 100 * sums[6] / n, "t2i_r5": 100 * sums[7] / n, "mean_r1": 50 * (sums[4] + sums[6]) / n,
               "samples": int(sums[0])}
        if classifier is not None:
            out["zeroshot_acc1"] = 100 * sums[1] / max(sums[2], 1.0)
        return out

    def extra_summary(self, model: nn.Module, cfg: TrainConfig, args: ClipArgs, data: TaskData,
                      device: torch.device) -> dict[str, Any]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"zeroshot_classes": list(data.info["held_out"]), "image_tower_params": count(model.visual),
                "params": count(model)}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        split = summary["test_split"]
        g = lambda k: summary.get(f"{split}_{k}", float("nan"))  # noqa: E731
        zero_shot = f"zero-shot top-1 {g('zeroshot_acc1'):.2f}%  " if f"{split}_zeroshot_acc1" in summary else ""
        return [f"  held-out ({split}): {zero_shot}image->text R@1 {g('i2t_r1'):.2f}% R@5 {g('i2t_r5'):.2f}%  "
                f"text->image R@1 {g('t2i_r1'):.2f}% R@5 {g('t2i_r5'):.2f}%  loss {g('loss'):.4f}  "
                f"({summary.get(f'{split}_samples')} samples)"]

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, meta: Mapping[str, Any], request: Request) -> list[dict[str, Any]]:
        """Zero-shot ranking of candidate labels per image: ``--text 'a red circle,a blue ring'`` (each label
        inside the caption templates), or the checkpoint's classes (built-in data)."""
        labels = [s.strip() for s in (request.text or "").split(",") if s.strip()]
        if labels:
            prompts = [[t.format(label) for t in TEMPLATES] for label in labels]
        elif meta.get("class_names"):
            labels = list(meta["class_names"])
            prompts = [class_prompts(c) for c in labels]
        else:
            raise UserError("pass the candidate labels as --text 'a dog,a cat' (comma-separated)")
        self.check_img_size(request.img_size)
        transform = image_transform(int(meta["input_size"][-1]), meta["mean"], meta["std"])
        files = collect_files(request.inputs, IMG_EXTENSIONS)
        images = [load_image(f, transform) for f in files]  # every file is read before any work
        model.eval().to(request.device)
        context = int(meta["clip_cfg"]["text_cfg"]["context_length"])
        classifier = class_embeddings(model, prompts, tokenizer(context), request.device)
        scale = logit_scale(model)
        out = []
        for start in range(0, len(files), request.batch_size):
            with torch.inference_mode():
                emb = model(torch.stack(images[start:start + request.batch_size]).to(request.device)).float()
            probs = (scale * emb @ classifier.T).softmax(1).cpu()
            values, indices = probs.topk(min(request.topk, len(labels)), dim=1)
            for path, vals, idxs in zip(files[start:start + request.batch_size], values.tolist(), indices.tolist()):
                out.append({"image": str(path), "predictions": [{"label": labels[i], "probability": v}
                                                                for v, i in zip(vals, idxs)]})
        return out

