"""Image-label pretraining of a detector's backbone on the detection set itself (not in the paper).

The paper's detectors start from an ImageNet-pretrained backbone (Table 6). Where none fits the data (the built-in
scenes, or any domain far from ImageNet), the detection annotations still say which classes each image holds.
``pretrain_on_image_labels`` trains the backbone for a few hundred steps as a multi-label image classifier on
those labels (global average pooling of the top map, one linear layer, binary cross-entropy; AdamW at a constant
lr), through the detector's own input transform, before the detector trains. On the built-in scenes this is what
teaches the backbone the scene's mode (the marker's colour), which the detector then reads through
``head.roi_context``; see docs/detection.md.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unireplknet.models.detection_semantic import image_label_loss, image_label_targets
from unireplknet.utils.atomic import atomic_file

log = logging.getLogger(__name__)


def _pooled_logits(model: nn.Module, head: nn.Linear, images: list[torch.Tensor]) -> torch.Tensor:
    """Images (list of (3, H, W) in [0, 1]) -> (N, K) class-presence logits from the image mean of the top map."""
    batch = model.transform(images)[0]
    return head(model.backbone(batch.tensors)[-1].mean((2, 3)))


def pretrain_on_image_labels(model: nn.Module, train: Dataset, val: Dataset | None, num_classes: int, steps: int,
                             lr: float, batch_size: int, collate: Any, seed: int = 0) -> dict[str, float]:
    """Train ``model.backbone`` (a CascadeMaskRCNN's) ``steps`` steps on the images' class-presence labels.

    ``train`` / ``val`` yield (image (3, H, W), target with ``labels`` (n,) in 1..K); ``collate`` batches them
    as lists. Returns the last 25 steps' mean loss and, with ``val``, the held-out label accuracy (the share of
    (image, class) presence decisions right at probability 0.5) and exact-match rate (every class of an image
    right), in percent. The temporary linear head is dropped; only the backbone keeps what it learned.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(train) < batch_size:  # (full batches only: fewer images would give none, and never end)
        raise ValueError(f"{len(train)} training images cannot fill one batch of {batch_size}")
    device = next(model.parameters()).device
    head = nn.Linear(model.backbone.dims[model.backbone.out_indices[-1]], num_classes).to(device)
    params = [p for p in model.backbone.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate,
                        generator=generator)
    was_training = model.training
    model.train()
    losses: list[float] = []
    step, t0 = 0, time.time()
    while step < steps:
        for images, targets in loader:
            images = [img.to(device) for img in images]
            loss = image_label_loss(_pooled_logits(model, head, images), [t["labels"].to(device) for t in targets])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % 25 == 0 or step == steps:
                log.info("image-label pretraining: step %d/%d  loss %.4f  (%.0f s)", step, steps,
                         sum(losses[-25:]) / len(losses[-25:]), time.time() - t0)
            if step == steps:
                break
    result = {"loss": sum(losses[-25:]) / len(losses[-25:])}
    if val is not None:
        result.update(_label_accuracy(model, head, val, batch_size, collate, num_classes))
        log.info("image-label pretraining: held-out label accuracy %.1f%%, exact match %.1f%%",
                 result["label_accuracy"], result["exact_match"])
    model.train(was_training)
    return result


@torch.no_grad()
def _label_accuracy(model: nn.Module, head: nn.Linear, data: Dataset, batch_size: int, collate: Any,
                    num_classes: int) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    right, exact, images_seen = 0, 0, 0
    for images, targets in DataLoader(data, batch_size=batch_size, collate_fn=collate):
        logits = _pooled_logits(model, head, [img.to(device) for img in images])
        truth = image_label_targets([t["labels"].to(device) for t in targets], num_classes)
        hit = (logits > 0).float() == truth
        right += int(hit.sum())
        exact += int(hit.all(dim=1).sum())
        images_seen += len(images)
    return {"label_accuracy": 100 * right / max(images_seen * num_classes, 1),
            "exact_match": 100 * exact / max(images_seen, 1)}


def pretrained_backbone(model: nn.Module, cache: Path | None, run_pretraining: Any) -> None:
    """Load ``model.backbone`` from ``cache`` when a previous start of this run wrote it (a resumed run), else
    call ``run_pretraining()`` and write the backbone there (atomically; in a distributed run rank 0 trains and
    the other ranks wait, then load). ``cache=None`` (no run folder): just ``run_pretraining()``."""
    import torch.distributed as dist

    if cache is None:
        run_pretraining()
        return
    distributed = dist.is_available() and dist.is_initialized()
    if not cache.is_file() and (not distributed or dist.get_rank() == 0):
        run_pretraining()
        with atomic_file(cache) as f:
            torch.save(model.backbone.state_dict(), f)
    if distributed:
        dist.barrier()
    if cache.is_file():
        model.backbone.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        log.info("backbone from image-label pretraining: %s", os.fspath(cache))
