"""One backbone for every modality (paper §3.3): a modality-specific embedder makes a B×C′×H×W map, the
unchanged :class:`UniRepLKNet` encodes it, and a head (or the backbone's own classifier) reads it out.

Checkpoint ``meta`` of such a model (besides ``task``)::

    {"model": None, "model_kwargs": {...UniRepLKNet kwargs...}, "deploy": bool,
     "embedder": {"name": "<registered name>", "kwargs": {...}},
     "head": {"name": "<registered name>", "kwargs": {...}} | None}

Embedders and heads are registered by name in :data:`unireplknet.modalities.EMBEDDERS` / ``HEADS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class EmbedderModel(nn.Module):
    """``embedder -> backbone -> head``.

    The embedder returns the map ``(B, C′, H, W)``, or ``(map, context)`` where ``context`` is handed to the
    head (e.g. the instance-normalization statistics and the raw window of a forecaster). With
    ``head=None`` the backbone's own pooled classifier gives the output; otherwise the head receives the
    backbone's last feature map ``(B, dims[-1], H/32, W/32)`` (and the context).
    """

    def __init__(self, embedder: nn.Module, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.embedder = embedder
        self.backbone = backbone
        self.head = head

    @property
    def deploy(self) -> bool:
        return bool(getattr(self.backbone, "deploy", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embedder(x)
        context = None
        if isinstance(z, tuple):
            z, context = z
        if self.head is None:
            return self.backbone(z)
        feats = self.backbone.forward_features(z)
        return self.head(feats) if context is None else self.head(feats, context)

    def reparameterize(self) -> EmbedderModel:
        """Re-parameterize the backbone in place (embedder and head have no training-only branches)."""
        self.backbone.reparameterize()
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimizer should not decay (timm convention): the head's ``no_weight_decay``."""
        names = getattr(self.head, "no_weight_decay", None)
        return {f"head.{n}" for n in names()} if callable(names) else set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)


def _resolve(table: Mapping[str, str], name: str, what: str) -> type:
    if name not in table:
        from unireplknet.errors import CheckpointError

        raise CheckpointError(f"unknown {what} '{name}' in the checkpoint meta; known: {', '.join(table)}")
    module, cls = table[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_embedder_model(meta: Mapping[str, Any], backbone: nn.Module | None = None) -> EmbedderModel:
    """The (untrained) model a multimodal checkpoint ``meta`` describes; ``backbone`` replaces the plain
    ``UniRepLKNet(**meta['model_kwargs'])`` (e.g. one built with stochastic depth for training)."""
    from unireplknet.modalities import EMBEDDERS, HEADS
    from unireplknet.models.unireplknet import UniRepLKNet

    emb = meta["embedder"]
    embedder = _resolve(EMBEDDERS, emb["name"], "embedder")(**dict(emb.get("kwargs") or {}))
    head_meta = meta.get("head")
    head = _resolve(HEADS, head_meta["name"], "head")(**dict(head_meta.get("kwargs") or {})) if head_meta else None
    if backbone is None:
        backbone = UniRepLKNet(**dict(meta.get("model_kwargs") or {}), deploy=bool(meta.get("deploy", False)))
    return EmbedderModel(embedder, backbone, head)
