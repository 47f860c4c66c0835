"""`unireplknet bench`: throughput (images/s) and latency of a model, training form vs deploy form.

The paper (Tables 4/5) reports throughput at batch 64 and 224x224 on an A100; the deploy form (after
re-parameterization, Sec. 3.1) drops the dilated branches and BatchNorms and should be faster.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from unireplknet.cli import _common as C
from unireplknet.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput and latency, training form vs deploy form",
                       description="Measure images/s and median latency of a model (by --model NAME or "
                                   "--checkpoint) in its training form and its re-parameterized form.")
    C.add_model_args(p)
    p.add_argument("--batch-size", type=C.positive_int, default=64, metavar="N", help="default 64")
    p.add_argument("--img-size", type=C.positive_int, default=224, metavar="N", help="default 224")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="default float32")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed passes (default 3)")
    p.add_argument("--iters", type=C.positive_int, default=10, metavar="N", help="timed passes (default 10)")
    p.add_argument("--output", metavar="DIR", help="also write the JSON to DIR/bench.json")
    C.add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unireplknet.analysis.throughput import measure_throughput

    if args.checkpoint is None and args.model is None:
        raise UserError("no model given; pass --model NAME (e.g. unireplknet_a) or --checkpoint PATH")
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    device = C.resolve_device(args.device)
    dtype = DTYPES[args.dtype]
    model, meta = C.load_model(args.checkpoint, args.model, args.num_classes, args.model_kwargs)
    in_chans = C.model_input_size(meta)[0]
    forms: dict[str, torch.nn.Module] = {}
    if not C.is_deploy(model):
        forms["training"] = model
        forms["deploy"] = C.deploy_copy(model)
    else:
        forms["deploy"] = model
    report: dict = {"model": meta.get("model"), "batch_size": args.batch_size, "img_size": args.img_size,
                    "device": str(device), "dtype": args.dtype, "channels_last": args.channels_last}
    for form, m in forms.items():
        try:
            r = measure_throughput(m, args.batch_size, args.img_size, device=device, dtype=dtype,
                                   channels_last=args.channels_last, warmup=args.warmup, iters=args.iters,
                                   in_chans=in_chans)
        except RuntimeError as err:
            if "not implemented" in str(err) or "Unsupported" in str(err):
                raise UserError(f"--dtype {args.dtype} is not supported on {device} by this PyTorch "
                                f"({str(err).splitlines()[0]}); use --dtype float32") from err
            raise
        report[form] = {"params": sum(p.numel() for p in m.parameters()),
                        "images_per_s": r["images_per_s"], "latency_ms_median": r["latency_ms_median"],
                        "latency_ms_min": r["latency_ms_min"]}
        m.to("cpu")
    if "training" in report:
        report["deploy_speedup"] = report["deploy"]["images_per_s"] / report["training"]["images_per_s"]
    if args.output:
        C.write_json(report, Path(args.output) / "bench.json")
    C.print_json(report)
    return 0
