"""Throughput and latency of a model's forward pass (inference, no grad), as reported in the paper's
Tables 4/5 (images/s at a given batch size and resolution; the paper measures on an A100 with batch 64)."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)


def measure_throughput(model: nn.Module, batch_size: int, img_size: int | tuple[int, int],
                       device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       channels_last: bool = False, warmup: int = 3, iters: int = 10,
                       in_chans: int = 3, sample_shape: Sequence[int] | None = None) -> dict:
    """Time ``iters`` forward passes of ``model`` on a random batch (batch_size, in_chans, H, W), or
    (batch_size, *sample_shape) for a model whose input is not an image (audio, point clouds, video, ...).

    The model is moved in place to ``device``/``dtype`` (channels-last memory format if asked) and put in eval
    mode. On CUDA each pass is timed with CUDA events after a synchronize; on CPU with ``perf_counter``.
    Returns ``{'images_per_s', 'latency_ms_median', 'latency_ms_mean', 'latency_ms_min', 'batch_size',
    'img_size', 'device', 'dtype', 'channels_last', 'iters'}`` where images/s = batch_size / median latency.
    """
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch_size, iters >= 1 and warmup >= 0; got {batch_size}, {iters}, {warmup}")
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, dtype=dtype, memory_format=memory_format).eval()
    shape = tuple(sample_shape) if sample_shape is not None else (in_chans, h, w)
    x = torch.randn(batch_size, *shape, device=device, dtype=dtype)
    if len(shape) == 3:
        x = x.to(memory_format=memory_format)
    cuda = device.type == "cuda"
    times_ms: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        if cuda:
            torch.cuda.synchronize(device)
        for _ in range(iters):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                end.synchronize()
                times_ms.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                model(x)
                times_ms.append((time.perf_counter() - t0) * 1e3)
    median = statistics.median(times_ms)
    result = {
        "images_per_s": batch_size / (median / 1e3) if median > 0 else float("inf"),
        "latency_ms_median": median,
        "latency_ms_mean": statistics.fmean(times_ms),
        "latency_ms_min": min(times_ms),
        "batch_size": batch_size,
        "img_size": [h, w] if sample_shape is None else None,
        "input_shape": list(x.shape),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "channels_last": channels_last,
        "iters": iters,
    }
    log.debug("throughput: %s", result)
    return result
