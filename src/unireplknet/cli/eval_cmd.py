"""`unireplknet eval`: the held-out metrics of a checkpoint, as JSON (the checkpoint's task evaluates).

Image classifiers report top-1 / top-5 on an image folder (or the built-in digits); other tasks their own metrics
on ``--data`` or, without it, on the data the checkpoint was trained on. With ``--reparam`` the model is
re-parameterized first (paper §3.1); both forms give the same metrics up to float rounding.
"""

from __future__ import annotations

import argparse

from unireplknet.cli import _common as C


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="held-out metrics of a checkpoint (JSON)",
                       description="Evaluate a checkpoint: images on DIR/val/<class>/* (or DIR/<class>/*, or the "
                                   "built-in 'digits'); other tasks on their data (default: the data it was trained "
                                   "on). Prints the metrics as JSON.")
    C.add_model_args(p, checkpoint_required=True)
    p.add_argument("--data", metavar="DIR", help="dataset (default: the checkpoint's own data)")
    p.add_argument("--reparam", action="store_true", help="evaluate the re-parameterized (deploy) form")
    p.add_argument("--batch-size", type=C.positive_int, default=64, metavar="N", help="default 64")
    p.add_argument("--img-size", type=C.image_size, metavar="N",
                   help="evaluation resolution of an image model (default: the checkpoint's input size)")
    p.add_argument("--workers", type=C.nonneg_int, default=0, metavar="N", help="data-loading processes (default 0)")
    p.add_argument("--output", metavar="DIR", help="also write the JSON report to DIR/eval.json")
    C.add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unireplknet.engine.config import make_config
    from unireplknet.engine.distributed import resolve_device
    from unireplknet.engine.task import Request
    from unireplknet.models import reparameterize
    from unireplknet.tasks import get_task

    device = resolve_device(args.device)
    model, meta, config = C.model_from_args(args)
    if args.reparam:
        reparameterize(model)
    task = get_task(meta.get("task"))
    cfg = make_config(config or {"task": task.name, "data": meta.get("data"), "model": meta.get("model"),
                                 "arch": meta.get("model_kwargs")})
    request = Request(data=args.data, batch_size=args.batch_size, device=device, workers=args.workers,
                             img_size=args.img_size)
    result = task.evaluate_checkpoint(model, meta, cfg, request)
    C.report({**result, "form": "deploy" if meta.get("deploy") or args.reparam else "training",
              "checkpoint": str(args.checkpoint), "data": str(args.data or cfg.data), "device": str(device)},
             args.output, "eval.json")
    return 0
