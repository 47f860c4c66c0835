"""Audio classification (paper §3.3 eq. 3, Table 8): waveform -> log-mel map (1×T×F) -> the unchanged
UniRepLKNet (``in_chans=1``) with its pooled classifier.

Data: the embedded synthesized spoken words (``--data spoken_words``, the default; test = held-out voices),
a Speech Commands v2 folder, or one folder per label. Training uses SpecAugment (in the embedder) and
waveform mixup (timm ``Mixup``, no CutMix). The end of the run evaluates the best weights on the test split
(``test_acc1`` in percent), checks the deploy form predicts the same labels and writes ``deploy.pt`` and
``summary.json`` (no ONNX export: the FFT has no portable ONNX form here).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from unireplknet.errors import UserError
from unireplknet.tasks.base import Task, TaskData, best_and_deploy, task_args, write_summary

log = logging.getLogger(__name__)

EMBEDDED = "spoken_words"
DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000, "clip_seconds": 1.0, "n_mels": 128, "win_ms": 25.0, "hop_ms": 10.0,
    "freq_mask": 24, "time_mask": 20, "num_masks": 2,
    "noise_snr": [10.0, 30.0],  # background noise mixed into the embedded clips (dB); null = none
    "synth_per_voice": 8,  # renditions per word and voice of the embedded dataset
    "synth_words": None,  # number of words of the embedded dataset (None: all 12)
    "synth_variants": None,  # restrict the embedded dataset's voices (tests)
    "norm_clips": 512,  # clips used for the fbank mean/std
}


def _backbone_kwargs(cfg: Any, num_classes: int, in_chans: int) -> dict[str, Any]:
    """UniRepLKNet kwargs from ``cfg.model`` (a Table 4 variant) or ``cfg.arch``."""
    if cfg.arch is not None:
        kwargs = dict(cfg.arch)
    else:
        from unireplknet.models.variants import VARIANTS

        if cfg.model not in VARIANTS:
            raise UserError(f"unknown model '{cfg.model}'; use one of {', '.join(VARIANTS)} or set arch")
        kwargs = {"depths": list(VARIANTS[cfg.model].depths), "dims": list(VARIANTS[cfg.model].dims)}
    kwargs.pop("num_classes", None)
    kwargs.pop("in_chans", None)
    return {**kwargs, "num_classes": num_classes, "in_chans": in_chans}


def build_backbone(cfg: Any, kwargs: dict[str, Any]) -> nn.Module:
    from unireplknet.models.unireplknet import UniRepLKNet

    try:
        return UniRepLKNet(**kwargs, drop_path_rate=cfg.drop_path,
                           layer_scale_init_value=cfg.layer_scale_init_value, head_init_scale=cfg.head_init_scale)
    except (TypeError, ValueError) as err:
        raise UserError(f"bad model arch in the config: {err}") from None


class AudioTask(Task):
    name = "audio"
    primary_metric = "val_acc1"
    mode = "max"
    default_config = "audio_default"

    def build_data(self, cfg: Any) -> TaskData:
        from unireplknet.data.audio import WaveformDataset, audio_splits, check_sample_rates

        a = task_args(cfg, DEFAULTS)
        sr = int(a["sample_rate"])
        clip = int(round(a["clip_seconds"] * sr))
        noise = tuple(a["noise_snr"]) if a["noise_snr"] else None
        if cfg.data in (None, EMBEDDED):
            from unireplknet.data.synth_speech import SAMPLE_RATE, WORDS, load_synth_speech

            if sr != SAMPLE_RATE:
                raise UserError(f"the embedded spoken words are {SAMPLE_RATE} Hz; set task_args.sample_rate "
                                f"to {SAMPLE_RATE}")
            words = WORDS[: a["synth_words"]] if a["synth_words"] else WORDS
            variants = tuple(a["synth_variants"]) if a["synth_variants"] else None
            arrays, names = load_synth_speech(per_voice=int(a["synth_per_voice"]), words=words,
                                              variants=variants, seed=0)
            sets = {}
            for split in ("train", "val", "test"):
                idx = np.flatnonzero(arrays["split"] == split)
                sets[split] = WaveformDataset(list(arrays["audio"][idx]), arrays["label"][idx], clip, sr,
                                              train=split == "train", noise_snr=noise, seed=cfg.seed + 1)
            layout = EMBEDDED
        else:
            splits, names, layout = audio_splits(Path(cfg.data))
            check_sample_rates([p for items in splits.values() for p, _ in items], sr)
            sets = {split: WaveformDataset([p for p, _ in items], [y for _, y in items], clip, sr,
                                           train=split == "train", seed=cfg.seed + 1)
                    for split, items in splits.items()}
        mean, std = _fbank_stats(sets["train"], a)
        info = {"class_names": list(names), "layout": layout, "clip_samples": clip, "fbank_mean": mean,
                "fbank_std": std, "args": a}
        log.info("audio data (%s): %d classes, %d / %d / %d train / val / test clips, fbank mean %.3f std %.3f",
                 layout, len(names), len(sets["train"]), len(sets["val"]), len(sets["test"]), mean, std)
        return TaskData(train=sets["train"], val=sets["val"], test=sets["test"], info=info)

    def check_resume(self, meta: dict[str, Any], data: TaskData, path: Any, cfg: Any) -> None:
        super().check_resume(meta, data, path, cfg)
        if list(meta.get("class_names", [])) != data.info["class_names"]:
            raise UserError(f"'{path}' was trained on other classes; resume with the same data")

    def embedder_kwargs(self, data: TaskData) -> dict[str, Any]:
        a = data.info["args"]
        return {"sample_rate": int(a["sample_rate"]), "n_mels": int(a["n_mels"]), "win_ms": float(a["win_ms"]),
                "hop_ms": float(a["hop_ms"]), "mean": data.info["fbank_mean"], "std": data.info["fbank_std"],
                "freq_mask": int(a["freq_mask"]), "time_mask": int(a["time_mask"]),
                "num_masks": int(a["num_masks"])}

    def build_model(self, cfg: Any, data: TaskData) -> nn.Module:
        from unireplknet.modalities.audio import FbankEmbedder
        from unireplknet.models.multimodal import EmbedderModel

        backbone = build_backbone(cfg, _backbone_kwargs(cfg, len(data.info["class_names"]), 1))
        model = EmbedderModel(FbankEmbedder(**self.embedder_kwargs(data)), backbone)
        if cfg.finetune:
            from unireplknet.tasks.classification import load_finetune

            load_finetune(model, cfg.finetune)
        return model

    def build_losses(self, cfg: Any, data: TaskData, mixup_active: bool) -> tuple[nn.Module, nn.Module]:
        from unireplknet.tasks.classification import build_losses

        return build_losses(cfg, mixup_active)

    def build_batch_transform(self, cfg: Any, data: TaskData) -> Any:
        """Waveform mixup (timm ``Mixup``, batch mode; CutMix does not apply to a waveform)."""
        if cfg.mixup <= 0:
            return None
        from timm.data import Mixup

        return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=0.0, prob=cfg.mixup_prob, mode="batch",
                     label_smoothing=cfg.smoothing, num_classes=len(data.info["class_names"]))

    def build_meta(self, cfg: Any, data: TaskData, deploy: bool = False) -> dict[str, Any]:
        return {"task": self.name, "model": None,
                "model_kwargs": _backbone_kwargs(cfg, len(data.info["class_names"]), 1), "deploy": deploy,
                "embedder": {"name": "audio_fbank", "kwargs": self.embedder_kwargs(data)}, "head": None,
                "class_names": list(data.info["class_names"]),
                "input_size": [data.info["clip_samples"]], "sample_rate": int(data.info["args"]["sample_rate"]),
                "task_args": dict(data.info["args"]), "data": cfg.data}

    def model_label(self, cfg: Any) -> str:
        from unireplknet.tasks.classification import model_label

        return f"fbank + {model_label(cfg)}"

    def evaluate(self, model: nn.Module, loader: Any, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, limit_batches: int | None = None) -> dict[str, Any]:
        from unireplknet.engine.loops import evaluate

        return evaluate(model, loader, device=device, amp=amp, limit_batches=limit_batches)

    def epoch_line(self, row: dict[str, Any]) -> str:
        return f"val_acc1 {row['val_acc1']:.2f}%  val_loss {row['val_loss']:.4f}"

    def test_metrics(self, model: nn.Module, data: TaskData, batch_size: int, device: torch.device,
                     workers: int = 0) -> dict[str, Any]:
        """Top-1 / top-5 accuracy (percent) and loss on the test split (``eval`` for a checkpoint)."""
        from unireplknet.engine.loops import evaluate

        loader = DataLoader(data.test, batch_size=batch_size, shuffle=False, num_workers=workers)
        r = evaluate(model.to(device), loader, device=device, reduce=False)
        return {"test_acc1": r["val_acc1"], "test_acc5": r["val_acc5"], "test_loss": r["val_loss"],
                "test_samples": r["val_samples"]}

    def finalize(self, *, cfg: Any, model: nn.Module, meta: dict[str, Any], data: TaskData, run_dir: Path,
                 state: Any, device: torch.device, t_start: float, progress: bool,
                 world_size: int = 1) -> dict[str, Any]:
        from unireplknet.engine.finalize import evaluate_both

        model, deploy, paths = best_and_deploy(model, meta, run_dir, device)
        results = {}
        for split in ("val", "test"):
            loader = DataLoader(getattr(data, split), batch_size=cfg.batch_size, shuffle=False,
                                num_workers=cfg.workers)
            results[split] = evaluate_both(model, deploy, loader, device, progress)
        test = results["test"]
        summary: dict[str, Any] = {
            "status": "completed", "task": self.name, "model": self.model_label(cfg), "data": cfg.data,
            "test_acc1": test["val_acc1"], "test_acc5": test["val_acc5"], "test_loss": test["val_loss"],
            "test_samples": test["val_samples"], "val_acc1": results["val"]["val_acc1"],
            "best_epoch": state.best_epoch, "epochs": state.epoch, "steps": state.step,
            "world_size": world_size, "global_batch": cfg.global_batch(world_size),
            "deploy_same_labels": test["deploy_label_agreement"] == 1.0,
            "deploy_max_abs_diff": test["deploy_max_abs_diff"],
            "wall_time_s": round(time.time() - t_start, 1), "paths": paths,
        }
        if not summary["deploy_same_labels"]:
            log.warning("deploy form disagrees on %.2f%% of the test labels",
                        100 * (1 - test["deploy_label_agreement"]))
        return write_summary(summary, run_dir)

    def print_summary(self, summary: dict[str, Any]) -> None:
        print("\n".join([
            "",
            f"Training finished: {summary['model']} on {summary['data']}, {summary['epochs']} epochs, "
            f"{summary['steps']} steps, {summary['wall_time_s']:.0f} s",
            f"  test top-1 {summary['test_acc1']:.2f}%  top-5 {summary['test_acc5']:.2f}%  "
            f"({summary['test_samples']} clips; val top-1 {summary['val_acc1']:.2f}%)",
            f"  deploy form: same labels {summary['deploy_same_labels']} (max |logit diff| "
            f"{summary['deploy_max_abs_diff']:.2e})",
            f"  run folder: {summary['paths']['run_dir']}  (summary.json)"]))


@torch.no_grad()
def _fbank_stats(dataset: Any, a: dict[str, Any]) -> tuple[float, float]:
    """Mean and std of the log-mel energies over up to ``norm_clips`` training clips (seeded pick)."""
    from unireplknet.modalities.audio import FbankEmbedder

    emb = FbankEmbedder(int(a["sample_rate"]), int(a["n_mels"]), float(a["win_ms"]), float(a["hop_ms"]))
    n = min(len(dataset), int(a["norm_clips"]))
    idx = np.random.default_rng(0).permutation(len(dataset))[:n]
    train_flag = dataset.train
    dataset.train = False  # deterministic crops/noise
    try:
        waves = torch.stack([dataset[int(i)][0] for i in idx])
    finally:
        dataset.train = train_flag
    feats = torch.cat([emb.features(waves[i: i + 64]) for i in range(0, n, 64)])
    return float(feats.mean()), float(feats.std())
