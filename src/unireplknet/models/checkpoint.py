"""Reading checkpoints (.pth/.pt, .safetensors) and loading them into models with clear errors.

Official checkpoints are training-form state dicts, raw or wrapped as ``{'model': ...}``; our run checkpoints
add a ``'meta'`` entry (model name, constructor kwargs, deploy flag, class names, input size, mean/std).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unireplknet.errors import CheckpointError

StateDict = dict[str, torch.Tensor]
_WRAPPER_KEYS = ("model", "state_dict", "model_state", "module")
_PREFIXES = ("module.", "_orig_mod.")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file into a dict (nothing executed: ``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check the path)")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise CheckpointError("reading .safetensors needs the safetensors package: "
                                  "pip install 'unireplknet[timm]'") from err
        device = str(map_location)
        try:
            return dict(load_file(str(path), device=device))
        except Exception as err:
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch.load fails in many ways on a file that is not a checkpoint
        if "unsupported global" in str(err).lower():  # pickled objects or code: never loaded (nor advised)
            raise CheckpointError(f"cannot read {path}: it holds Python objects or code, not only tensors, so it is "
                                  "not a checkpoint this library can load safely") from err
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint ({type(err).__name__}); it is truncated "
                              "or not a checkpoint") from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a dict of them")
    return dict(obj)


def extract_state_dict(obj: Mapping[str, Any]) -> StateDict:
    """The model's state dict from a raw, ``{'model': ...}`` or ``{'state_dict': ...}`` checkpoint,
    without DDP (``module.``) or ``torch.compile`` (``_orig_mod.``) prefixes."""
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError("no tensors found in the checkpoint (expected a state dict, raw or under "
                              "'model' / 'state_dict')")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A 3-channel input conv's weight (C_out, 3, k, k) for ``in_chans`` inputs, the rule of timm's
    ``adapt_input_conv``: summed over the channels for 1, else tiled to ``in_chans`` and scaled by 3 / in_chans
    (a gray or repeated image then gives the same response)."""
    if weight.shape[1] != 3:
        raise CheckpointError(f"cannot adapt an input conv with {weight.shape[1]} input channels (expects 3) "
                              f"to in_chans={in_chans}; build the model with in_chans={weight.shape[1]}")
    dtype = weight.dtype
    weight = weight.float()
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True).to(dtype)
    repeats = -(-in_chans // 3)
    return (weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)).to(dtype)


def _form_hint(model: nn.Module, missing: list[str], unexpected: list[str]) -> str:
    deploy_keys = any(k.endswith("lk_origin.bias") or k.endswith("pwconv2.0.bias") for k in unexpected)
    train_keys = any(".origin_bn." in k or k.endswith(".gamma") or ".pwconv2.2." in k for k in unexpected)
    if deploy_keys and getattr(model, "deploy", None) is False:
        return "; it looks like a deploy-form checkpoint: build the model with deploy=True"
    if train_keys and getattr(model, "deploy", None) is True:
        return "; it looks like a training-form checkpoint: build the model with deploy=False " \
               "(then reparameterize())"
    return ""


def _summarize(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


def load_checkpoint(model: nn.Module, path_or_state_dict: str | Path | Mapping[str, Any],
                    strict: bool = True) -> Any:
    """Load a checkpoint (path or dict) into ``model``; returns load_state_dict's (missing, unexpected) keys.

    Shape mismatches always fail with the names and shapes; with ``strict`` so do missing or unexpected
    keys (with a hint when the checkpoint is of the other form, training vs deploy).
    """
    obj = path_or_state_dict if isinstance(path_or_state_dict, Mapping) else read_checkpoint(path_or_state_dict)
    state = extract_state_dict(obj)
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if wrong:
        hint = ""
        if all(w.startswith("head.") for w in wrong) and "head.weight" in state:
            n = state["head.weight"].shape[0]
            hint = (f" (its head has {n} classes: pass num_classes={n}, --num-classes {n} on the command line, or "
                    "drop the head keys to fine-tune)")
        raise CheckpointError(f"checkpoint does not fit the model: shape mismatch for {_summarize(wrong)}{hint}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarize(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarize(unexpected)}")
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(parts)
                              + _form_hint(model, missing, unexpected))
    return model.load_state_dict(state, strict=strict)


#: ``meta['builder']`` -> ``"module:function"`` that builds the (untrained) model from the meta.
BUILDERS: dict[str, str] = {"referring": "unireplknet.models.referring:from_meta",
                            "clip": "unireplknet.models.clip:build_from_meta"}


def build_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """The model of a checkpoint whose ``meta['builder']`` names a function of :data:`BUILDERS`."""
    name = meta["builder"]
    if name not in BUILDERS:
        raise CheckpointError(f"unknown builder '{name}' in the checkpoint meta; known: {', '.join(BUILDERS)}")
    module, func = BUILDERS[name].split(":")
    try:
        return getattr(importlib.import_module(module), func)(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint meta does not describe a '{name}' model ({err})") from None


def build_model_from_checkpoint(path_or_dict: str | Path | Mapping[str, Any],
                                map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a run checkpoint describes (its ``'meta'``) and load its weights strictly."""
    from unireplknet.models.registry import create_model
    from unireplknet.models.unireplknet import UniRepLKNet

    obj = path_or_dict if isinstance(path_or_dict, Mapping) else read_checkpoint(path_or_dict, map_location)
    meta = obj.get("meta")
    if not isinstance(meta, Mapping):
        raise CheckpointError("the checkpoint has no 'meta' (an official or foreign checkpoint): name the model "
                              "(e.g. --model unireplknet_t and --num-classes) so it can be built")
    if meta.get("builder"):  # a model of its own kind (BUILDERS), built from its meta
        model: nn.Module = build_from_meta(meta)
        load_checkpoint(model, obj, strict=True)
        return model, dict(meta)
    if meta.get("embedder"):  # another modality: embedder -> backbone -> head
        from unireplknet.models.multimodal import build_embedder_model

        model = build_embedder_model(meta)
        load_checkpoint(model, obj, strict=True)
        return model, dict(meta)
    kwargs = dict(meta.get("model_kwargs") or {})
    kwargs["deploy"] = bool(meta.get("deploy", False))
    name = meta.get("model")
    model = create_model(name, **kwargs) if name else UniRepLKNet(**kwargs)
    load_checkpoint(model, obj, strict=True)
    return model, dict(meta)
