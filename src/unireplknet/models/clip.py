"""CLIP with a UniRepLKNet image tower (paper §4.3, Table 13: UniRepLKNet-L as OpenCLIP's image tower).

* :func:`register_open_clip` adds one OpenCLIP model config per variant (``open_clip_configs/UniRepLKNet-A.json``
  … ``-H``: the image tower is the variant through timm, average pooling and a linear projection), so that
  ``open_clip.create_model_and_transforms('UniRepLKNet-L')`` works after ``import unireplknet``.
* :class:`CLIPModel` is open_clip's ``CLIP`` (same state-dict keys) whose image trunk may take custom settings
  (``tower_kwargs``: kernel sizes for small images, dims, layer scale, ...) and whose forward also takes one
  modality: ``model(images)`` -> image embeddings, what ``reparam``, ``export`` and ``bench`` run.

Checkpoint ``meta``: ``{"builder": "clip", "clip_cfg": {embed_dim, vision_cfg, text_cfg}, "tower_kwargs": {...}
| None, "deploy": bool, ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from unireplknet.models.registry import reparameterize

CONFIG_DIR = Path(__file__).with_name("open_clip_configs")
MAX_LOGIT_SCALE = 100.0  # OpenCLIP clamps the learned temperature's exp to this


def register_open_clip() -> list[str]:
    """Add the ``UniRepLKNet-*`` configs to open_clip's registry; returns their names."""
    open_clip.add_model_config(CONFIG_DIR)
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def open_clip_config(name: str) -> dict[str, Any]:
    """A registered OpenCLIP model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) by name."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown OpenCLIP model '{name}'")
    return cfg


class CLIPModel(open_clip.CLIP):
    """open_clip's CLIP; ``tower_kwargs`` rebuild the image trunk (``vision_cfg['timm_model_name']``) with these
    timm model kwargs — for a UniRepLKNet, :func:`unireplknet.create_model`'s (``kernel_sizes``, ``dims``,
    ``layer_scale_init_value``, ...)."""

    def __init__(self, embed_dim: int, vision_cfg: Mapping[str, Any], text_cfg: Mapping[str, Any],
                 tower_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(embed_dim, dict(vision_cfg), dict(text_cfg), **kwargs)
        if tower_kwargs:  # (built twice: open_clip's TimmModel passes no model kwargs to timm)
            import timm

            drop_path = vision_cfg.get("timm_drop_path")
            trunk = timm.create_model(vision_cfg["timm_model_name"], **tower_kwargs,
                                      **({} if drop_path is None else {"drop_path_rate": drop_path}))
            pool = vision_cfg.get("timm_pool", "avg")
            trunk.reset_classifier(0, **({"global_pool": pool} if pool else {}))
            self.visual.trunk = trunk
            if self.visual.head.proj.in_features != trunk.num_features:
                self.visual.head.proj = nn.Linear(trunk.num_features, embed_dim, bias=False)

    @property
    def deploy(self) -> bool:
        """Whether the image trunk is in its re-parameterized form (a trunk without such blocks always is)."""
        return bool(getattr(self.visual.trunk, "deploy", True))

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> Any:
        """``image`` (N, 3, H, W) alone -> normalized image embeddings (N, E); ``text`` (N, L) token ids alone ->
        normalized text embeddings (N, E); both -> (image embeddings, text embeddings, exp(logit scale) clamped
        to 100), the arguments of open_clip's ``ClipLoss``."""
        if text is None:
            return self.encode_image(image, normalize=True)
        if image is None:
            return self.encode_text(text, normalize=True)
        return (self.encode_image(image, normalize=True), self.encode_text(text, normalize=True),
                self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))


def build_clip(clip_cfg: Mapping[str, Any], tower_kwargs: Mapping[str, Any] | None = None) -> CLIPModel:
    """A fresh :class:`CLIPModel` from an OpenCLIP config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
    cfg = dict(clip_cfg)
    return CLIPModel(cfg.pop("embed_dim"), cfg.pop("vision_cfg"), cfg.pop("text_cfg"), tower_kwargs, **cfg)


def build_from_meta(meta: Mapping[str, Any]) -> CLIPModel:
    """The (untrained) model a clip checkpoint's ``meta`` describes, in deploy form when ``meta['deploy']`` (a meta
    that does not fit raises KeyError / TypeError / ValueError: ``models.checkpoint.build_from_meta`` reports it)."""
    try:
        model = build_clip(meta["clip_cfg"], meta.get("tower_kwargs"))
    except RuntimeError as err:  # timm: an unknown tower name
        raise ValueError(str(err)) from None
    return reparameterize(model) if meta.get("deploy") else model
