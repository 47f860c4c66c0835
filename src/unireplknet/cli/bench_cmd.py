"""`unireplknet bench`: throughput (inputs/s, reported as ``images_per_s``) and latency, training vs deploy form.

The paper (Tables 4/5) reports throughput at batch 64 and 224x224 on an A100; the deploy form (after
re-parameterization, §3.1) drops the dilated branches and BatchNorms and should be faster.
"""

from __future__ import annotations

import argparse
import os

import torch

from unireplknet.cli import _common as C
from unireplknet.errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput and latency, training form vs deploy form",
                       description="Measure inputs/s and median latency of a model (by --model NAME or "
                                   "--checkpoint) in its training form and its re-parameterized form.")
    C.add_model_args(p)
    p.add_argument("--batch-size", type=C.positive_int, default=64, metavar="N", help="default 64")
    p.add_argument("--img-size", type=C.image_size, metavar="N",
                   help="resolution of an image model (default: its input size, 224 for a named model)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="default float32")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--warmup", type=C.nonneg_int, default=3, metavar="N", help="untimed passes (default 3)")
    p.add_argument("--iters", type=C.positive_int, default=10, metavar="N", help="timed passes (default 10)")
    p.add_argument("--output", metavar="DIR", help="also write the JSON to DIR/bench.json")
    C.add_device_arg(p)
    p.set_defaults(func=run)


def _check_memory(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse an input batch that alone would not fit in the machine's memory (the activations need more)."""
    need = shape.numel() * torch.empty((), dtype=dtype).element_size()
    have = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if 4 * need > have:
        raise UserError(f"a batch of {shape[0]} inputs of shape {tuple(shape[1:])} needs more than the "
                        f"{have / 2**30:.0f} GiB of {device.type} memory here; lower --batch-size")


def run(args: argparse.Namespace) -> int:
    from unireplknet.analysis.throughput import measure_throughput
    from unireplknet.engine.distributed import resolve_device
    from unireplknet.models import reparameterize
    from unireplknet.tasks import get_task

    if args.checkpoint is None and args.model is None:
        raise UserError("no model given; pass --model NAME (e.g. unireplknet_a) or --checkpoint PATH")
    device = resolve_device(args.device)
    model, meta, _ = C.model_from_args(args)
    task = get_task(meta.get("task"))
    shape = torch.Size([args.batch_size, *task.input_shape(meta, args.img_size)])
    _check_memory(shape, DTYPES[args.dtype], device)
    forms = {"deploy": model} if meta.get("deploy") else {"training": model, "deploy": None}
    report: dict = {"model": meta.get("model"), "batch_size": args.batch_size, "input_shape": list(shape[1:]),
                    "img_size": shape[-1] if task.resizable_input else None,
                    "device": str(device), "dtype": args.dtype, "channels_last": args.channels_last}
    for form in list(forms):
        m = forms[form] if forms[form] is not None else reparameterize(model)  # (after the training form ran)
        try:
            r = measure_throughput(m, args.batch_size, 0, device=device, dtype=DTYPES[args.dtype],
                                   channels_last=args.channels_last, warmup=args.warmup, iters=args.iters,
                                   sample_shape=shape[1:])
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            if "not implemented" in first or "Unsupported" in first:
                raise UserError(f"--dtype {args.dtype} is not supported on {device} by this PyTorch ({first}); use "
                                "--dtype float32") from None
            if "out of memory" in first or "can't allocate" in first:
                raise UserError(f"out of memory at batch {args.batch_size}; lower --batch-size") from None
            raise
        report[form] = {"params": sum(p.numel() for p in m.parameters()), "images_per_s": r["images_per_s"],
                        "latency_ms_median": r["latency_ms_median"], "latency_ms_min": r["latency_ms_min"]}
    if "training" in report:
        report["deploy_speedup"] = report["deploy"]["images_per_s"] / report["training"]["images_per_s"]
    C.report(report, args.output, "bench.json")
    return 0
