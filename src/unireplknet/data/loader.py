"""Datasets, transforms and loaders for a training run (timm's ``create_transform`` and ``Mixup``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from unireplknet.data.datasets import DigitsDataset, ImageFolderDataset, data_folder
from unireplknet.data.sampler import ResumableDistributedSampler
from unireplknet.errors import UserError

log = logging.getLogger(__name__)

BUILTIN = ("digits",)


def train_transform(cfg: Any):
    """timm's training pipeline (random resized crop, flip, RandAugment, colour jitter, random erasing) from the
    config's fields."""
    from timm.data import create_transform

    return create_transform(
        input_size=(cfg.in_chans, cfg.img_size, cfg.img_size), is_training=True, scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio), hflip=cfg.hflip, color_jitter=cfg.color_jitter or None,
        auto_augment=cfg.auto_augment or None, interpolation=cfg.interpolation, mean=tuple(cfg.mean),
        std=tuple(cfg.std), re_prob=cfg.reprob, re_mode=cfg.remode, re_count=1)


def eval_transform(input_size: tuple[int, int, int], mean: Sequence[float], std: Sequence[float],
                   crop_pct: float = 0.875, interpolation: str = "bicubic"):
    """Resize to size / crop_pct, center-crop, normalize -> (C, H, W) (timm's eval pipeline)."""
    from timm.data import create_transform

    return create_transform(input_size=tuple(input_size), is_training=False, interpolation=interpolation,
                            mean=tuple(mean), std=tuple(std), crop_pct=crop_pct)


def build_datasets(cfg: Any) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names) for ``cfg.data``: a built-in name or an ImageFolder root."""
    if not cfg.data:
        raise UserError("this recipe needs a dataset: pass --data DIR (an ImageFolder root with train/ and val/) or "
                        "--data digits")
    train_tf = train_transform(cfg)
    val_tf = eval_transform((cfg.in_chans, cfg.img_size, cfg.img_size), cfg.mean, cfg.std, cfg.crop_pct,
                            cfg.interpolation)
    if cfg.data == "digits":
        train = DigitsDataset("train", train_tf, size=cfg.img_size, in_chans=cfg.in_chans)
        val = DigitsDataset("val", val_tf, size=cfg.img_size, in_chans=cfg.in_chans)
        return train, val, list(DigitsDataset.class_names)
    root = data_folder(cfg.data, f"a folder with train/ and val/ class folders, or one of: {', '.join(BUILTIN)}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"'{root}' has no '{split}/' folder; lay the data out as "
                            f"{root}/train/<class>/*.jpg "
                            f"and {root}/val/<class>/*.jpg")
    train = ImageFolderDataset(root / "train", train_tf, in_chans=cfg.in_chans)
    val = ImageFolderDataset(root / "val", val_tf, class_names=train.class_names, in_chans=cfg.in_chans)
    if len(train.class_names) < 2:
        raise UserError(f"'{root / 'train'}' has {len(train.class_names)} class folder; classification needs "
                        "at least 2")
    train.check_readable()
    val.check_readable()
    return train, val, train.class_names


def build_loader(dataset: Dataset, cfg: Any, *, rank: int, world_size: int, train: bool,
                 device: torch.device, collate: Callable | None = None) -> DataLoader:
    """A loader over this rank's shard (its ``sampler`` resumes mid-epoch). Training drops the last partial batch
    (mixup needs pairs). ``collate`` batches samples (default: stacking)."""
    sampler = ResumableDistributedSampler(len(dataset), rank=rank, world_size=world_size, shuffle=train,
                                          seed=cfg.seed, pad=train)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=cfg.pin_memory and device.type == "cuda", drop_last=train,
                        persistent_workers=cfg.workers > 0, collate_fn=collate)
    return loader
