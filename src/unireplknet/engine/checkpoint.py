"""Run checkpoints: RNG states, the model's state dict in the official layout, reading a checkpoint back.

A run checkpoint is ``torch.save`` of::

    {'model': state_dict (official key layout), 'meta': {...what rebuilds the model...}, 'config': {...},
     'optimizer', 'scheduler', 'ema', 'scaler', 'epoch', 'step', 'epoch_samples', 'rng', ...}

Everything in it is tensors or plain Python data, so ``torch.load(..., weights_only=True)`` reads it. It is
written atomically (``utils.atomic``): a ``kill -9`` at any moment leaves the old or the new file, never a torn one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, numpy, random) as tensors and plain data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": _to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _to_plain(obj: Any) -> Any:
    return [_to_plain(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _to_tuple(obj: Any) -> Any:
    return tuple(_to_tuple(o) for o in obj) if isinstance(obj, list) else obj


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The bare model's state dict on CPU (official key layout: no ``module.`` / ``_orig_mod.``)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}
