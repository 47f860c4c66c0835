"""A local stand-in for the Hugging Face hub: the official files of DingXiaoH/UniRepLKNet, laid out as the hub's
cache holds them, with weights of our own models in the official key layout. Used offline (HF_HUB_OFFLINE)."""

from __future__ import annotations

from pathlib import Path

import torch

from unireplknet.models.pretrained import CHECKPOINT_FILES, HF_REPO, IN22K_CLASSES
from unireplknet.models.registry import build_variant

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def snapshot_dir(cache: Path) -> Path:
    """The snapshot folder of HF_REPO in the hub cache ``cache`` (created with its refs/main)."""
    repo = cache / f"models--{HF_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def release(cache: Path, name: str, tag: str, state_dict: dict[str, torch.Tensor]) -> Path:
    """Put ``state_dict`` in the cache as the released file of ``name``/``tag`` (torch.save'd under 'model')."""
    path = snapshot_dir(cache) / CHECKPOINT_FILES[name][tag]
    torch.save({"model": state_dict}, path)
    return path


def constant_release(name: str, tag: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The training-form state dict of ``name`` with the release's head, every tensor one random constant
    broadcast to its shape (a few bytes on disk whatever the model's size); built on the meta device."""
    classes = IN22K_CLASSES if tag == "in22k" else 1000
    shapes = build_variant(name, num_classes=classes, device="meta").state_dict()
    gen = torch.Generator().manual_seed(seed)
    values = 0.5 + torch.rand(len(shapes), generator=gen)  # positive: valid BatchNorm variances too
    return {k: torch.full((), float(v)).to(t.dtype).expand(t.shape) for (k, t), v in zip(shapes.items(), values)}
