"""ONNX export of a (re-parameterized) model and its verification against onnxruntime.

The deploy form of UniRepLKNet (paper §3.1: every Dilated Reparam Block and BatchNorm merged into one depthwise
conv with bias) is a plain chain of convs, so it exports to a compact graph without any ``BatchNormalization``
node. The input is one tensor ``(N, *input_size)`` — an image (C, H, W), or a modality's raw sample — with a
dynamic batch axis; the rest of the shape is fixed at export time.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from unireplknet.errors import UserError
from unireplknet.utils.atomic import atomic_file

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
OPSETS = range(14, 21)  # what the TorchScript-based exporter writes for these models (LayerNorm, GELU, ...)


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's parameters live and their floating dtype (CPU/float32 for a parameterless model)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return device, dtype


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int] = (3, 224, 224),
                opset: int | None = None) -> Path:
    """Export ``model`` (put in eval mode; re-parameterize it first for the deploy form) to ONNX at ``path``.

    Input ``input`` (N, *input_size), output ``logits`` (N, ...), N dynamic. Uses the TorchScript-based exporter
    (``dynamo=False``), which handles a dynamic batch robustly for plain conv nets. Written atomically.
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset not in OPSETS:
        raise UserError(f"ONNX opset {opset} is not supported; use {OPSETS.start}…{OPSETS.stop - 1} "
                        f"(default {DEFAULT_OPSET})")
    was_training = model.training
    model.eval()
    try:
        device, dtype = _device_and_dtype(model)
        dummy = torch.randn(2, *input_size, device=device, dtype=dtype)
        with atomic_file(path) as f, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), f, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
    finally:
        model.train(was_training)
    log.info("exported ONNX (opset %d, input %s, dynamic batch) to %s", opset, tuple(input_size), path)
    return Path(path)


def onnx_op_types(onnx_path: str | os.PathLike) -> set[str]:
    """The operator types in an ONNX graph (e.g. to check that no BatchNormalization is left)."""
    import onnx

    return {node.op_type for node in onnx.load(str(onnx_path)).graph.node}


def verify_onnx(model: nn.Module, onnx_path: str | os.PathLike, inputs: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch outputs on ``inputs`` (N, ...).

    ``model`` runs in eval mode under ``torch.no_grad`` on its own device; outputs are compared in float32.
    """
    import numpy as np
    import onnxruntime as ort

    was_training = model.training
    model.eval()
    try:
        device, dtype = _device_and_dtype(model)
        with torch.no_grad():
            ref = model(inputs.to(device=device, dtype=dtype)).float().cpu().numpy()
    finally:
        model.train(was_training)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = inputs.detach().cpu().float().numpy()
    if session.get_inputs()[0].type == "tensor(float16)":
        feed = feed.astype(np.float16)
    out = session.run(None, {session.get_inputs()[0].name: feed})[0].astype(np.float32)
    if out.shape != ref.shape:
        raise RuntimeError(f"ONNX output shape {out.shape} differs from PyTorch's {ref.shape}")
    diff = float(np.max(np.abs(out - ref))) if out.size else 0.0
    log.info("onnxruntime vs PyTorch: max |diff| = %.3g on %d inputs", diff, inputs.shape[0])
    return diff
