"""Audio classification (paper §3.3 eq. 3, Table 8): waveform -> log-mel map (1×T×F) -> the unchanged
UniRepLKNet (``in_chans=1``) with its pooled classifier.

Data: the built-in synthesized spoken words (``--data spoken_words``, the default; test = held-out voices),
a Speech Commands v2 folder, or one folder per label. Training uses SpecAugment (in the embedder) and waveform
mixup (no CutMix). The fbank's DFT is a matrix product, so the whole model exports to ONNX (waveform in).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from unireplknet.engine.config import TrainConfig
from unireplknet.engine.task import Request, TaskData
from unireplknet.errors import UserError
from unireplknet.tasks import register_task
from unireplknet.tasks.classification import Classifier, backbone_kwargs, build_backbone, load_finetune
from unireplknet.utils.typed import check

log = logging.getLogger(__name__)


@dataclass
class AudioArgs:
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    n_mels: int = 128
    win_ms: float = 25.0
    hop_ms: float = 10.0
    freq_mask: int = 24  # SpecAugment
    time_mask: int = 20
    num_masks: int = 2
    clip_mean_norm: bool = False  # subtract each mel bin's mean over the clip (cepstral mean normalization)
    noise_snr: list[float] | None = field(default_factory=lambda: [10.0, 30.0])  # built-in clips' noise (dB)
    synth_per_voice: int = 8  # renditions per word and voice of the built-in dataset
    synth_words: int | None = None  # number of words of the built-in dataset (None: all 12)
    synth_variants: list[str] | None = None  # restrict the built-in dataset's voices (tests)
    norm_clips: int = 512  # clips used for the fbank mean/std

    def __post_init__(self) -> None:
        check([(self.sample_rate >= 1000, "sample_rate must be at least 1000 Hz"),
               (self.clip_seconds > 0, "clip_seconds must be positive"), (self.n_mels >= 8, "n_mels must be >= 8"),
               (self.win_ms > 0 and self.hop_ms > 0, "win_ms and hop_ms must be positive"),
               (self.noise_snr is None or len(self.noise_snr) == 2, "noise_snr must be [low, high] dB or null"),
               (self.norm_clips >= 1 and self.synth_per_voice >= 1, "norm_clips and synth_per_voice must be >= 1")])


@register_task
class AudioTask(Classifier):
    name = "audio"
    Args = AudioArgs
    default_config = "audio_default"
    builtin_data = ("spoken_words",)
    mixes = ("mixup",)
    input_suffixes: ClassVar[tuple[str, ...]] = (".wav", ".flac", ".ogg", ".mp3")

    def build_data(self, cfg: TrainConfig, args: AudioArgs) -> TaskData:
        from unireplknet.data.audio import WaveformDataset, audio_splits, check_sample_rates

        sr = args.sample_rate
        clip = int(round(args.clip_seconds * sr))
        if cfg.data in (None, *self.builtin_data):
            from unireplknet.data.synth_speech import SAMPLE_RATE, WORDS, load_synth_speech

            if sr != SAMPLE_RATE:
                raise UserError(f"the built-in spoken words are {SAMPLE_RATE} Hz; set task_args.sample_rate to "
                                f"{SAMPLE_RATE}")
            arrays, names = load_synth_speech(per_voice=args.synth_per_voice, seed=0,
                                              words=WORDS[: args.synth_words] if args.synth_words else WORDS,
                                              variants=tuple(args.synth_variants) if args.synth_variants else None)
            noise = tuple(args.noise_snr) if args.noise_snr else None
            sets = {}
            for split in ("train", "val", "test"):
                idx = np.flatnonzero(arrays["split"] == split)
                sets[split] = WaveformDataset(list(arrays["audio"][idx]), arrays["label"][idx], clip, sr,
                                              train=split == "train", noise_snr=noise, seed=cfg.seed + 1)
            layout = "spoken_words"
        else:
            splits, names, layout = audio_splits(Path(cfg.data))
            check_sample_rates([p for items in splits.values() for p, _ in items], sr)
            sets = {split: WaveformDataset([p for p, _ in items], [y for _, y in items], clip, sr,
                                           train=split == "train", seed=cfg.seed + 1)
                    for split, items in splits.items()}
        mean, std = _fbank_stats(sets["train"], args)
        log.info("audio data (%s): %d classes, %d / %d / %d train / val / test clips, fbank mean %.3f std %.3f",
                 layout, len(names), len(sets["train"]), len(sets["val"]), len(sets["test"]), mean, std)
        return TaskData(sets["train"], sets["val"], sets["test"], {"class_names": list(names), "clip_samples": clip,
                                                                   "fbank_mean": mean, "fbank_std": std})

    def model_meta(self, cfg: TrainConfig, args: AudioArgs, data: TaskData) -> dict[str, Any]:
        embedder = {"sample_rate": args.sample_rate, "n_mels": args.n_mels, "win_ms": args.win_ms,
                    "hop_ms": args.hop_ms, "mean": data.info["fbank_mean"], "std": data.info["fbank_std"],
                    "freq_mask": args.freq_mask, "time_mask": args.time_mask, "num_masks": args.num_masks,
                    "clip_mean_norm": args.clip_mean_norm}
        return {"model": None, "model_kwargs": backbone_kwargs(cfg, len(data.info["class_names"]), 1),
                "embedder": {"name": "audio_fbank", "kwargs": embedder}, "head": None,
                "class_names": list(data.info["class_names"]), "input_size": [data.info["clip_samples"]],
                "sample_rate": args.sample_rate}

    def build_model(self, cfg: TrainConfig, args: AudioArgs, data: TaskData) -> nn.Module:
        from unireplknet.models.multimodal import build_embedder_model

        meta = self.model_meta(cfg, args, data)
        model = build_embedder_model(meta, build_backbone(cfg, meta["model_kwargs"]))
        if cfg.finetune:
            load_finetune(model, cfg.finetune)
        return model

    def model_label(self, cfg: TrainConfig) -> str:
        return f"fbank + {super().model_label(cfg)}"

    def read_input(self, path: Path, meta: Mapping[str, Any], request: Request) -> torch.Tensor:
        from unireplknet.data.audio import fix_length, read_audio

        return torch.from_numpy(fix_length(read_audio(path, int(meta["sample_rate"])), int(meta["input_size"][0])))


@torch.no_grad()
def _fbank_stats(dataset: Any, args: AudioArgs) -> tuple[float, float]:
    """Mean and std of the log-mel energies (after the per-clip mean normalization when it is on) over up to
    ``norm_clips`` training clips (seeded pick)."""
    from unireplknet.modalities.audio import FbankEmbedder

    emb = FbankEmbedder(args.sample_rate, args.n_mels, args.win_ms, args.hop_ms)
    n = min(len(dataset), args.norm_clips)
    idx = np.random.default_rng(0).permutation(len(dataset))[:n]
    train_flag = dataset.train
    dataset.train = False  # deterministic crops/noise
    try:
        waves = torch.stack([dataset[int(i)][0] for i in idx])
    finally:
        dataset.train = train_flag
    feats = torch.cat([emb.features(waves[i: i + 64]) for i in range(0, n, 64)])
    if args.clip_mean_norm:
        feats = feats - feats.mean(dim=1, keepdim=True)
    return float(feats.mean()), float(feats.std())
