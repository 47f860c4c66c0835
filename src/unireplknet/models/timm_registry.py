"""Registers every variant with timm (imported by ``unireplknet`` when timm is installed).

``timm.create_model('unireplknet_t', num_classes=10)``, ``features_only=True`` and tags such as
``'unireplknet_s.in22k'`` then work; each entry point delegates to :func:`unireplknet.create_model`.
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models._registry import generate_default_cfgs

from unireplknet.models.pretrained import CHECKPOINT_FILES, TAG_ORDER, pretrained_cfg
from unireplknet.models.registry import create_model
from unireplknet.models.variants import VARIANTS


def _cfgs() -> dict[str, dict[str, Any]]:
    cfgs = {}
    for name in VARIANTS:
        tags = [t for t in TAG_ORDER if t in CHECKPOINT_FILES.get(name, {})]
        for tag in tags or [None]:
            cfg = pretrained_cfg(name, tag)
            for key in ("architecture", "tag", "pool_size"):
                cfg.pop(key)
            cfgs[f"{name}.{tag}" if tag else name] = cfg
    return cfgs


default_cfgs = generate_default_cfgs(_cfgs())


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any):
        return create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"UniRepLKNet variant {name} (see unireplknet.create_model)."
    return entrypoint


for _name in VARIANTS:
    globals()[_name] = register_model(_entrypoint(_name))
