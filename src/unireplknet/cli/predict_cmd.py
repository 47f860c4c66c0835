"""`unireplknet predict`: a checkpoint's predictions for input files, as JSON (the checkpoint's task predicts:
top-k labels for images, audio, point clouds and video; forecasts for station CSVs; masks and detections for dense
tasks, written under ``--output``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unireplknet.cli import _common as C


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predictions of a checkpoint for input files (JSON)",
                       description="Run a checkpoint on input files or folders and print its predictions as JSON "
                                   "(for classifiers: the top-k class names and softmax probabilities).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files or folders (images, audio, ...)")
    C.add_model_args(p, checkpoint_required=True)
    p.add_argument("--topk", type=C.positive_int, default=5, metavar="K", help="labels per input (default 5)")
    p.add_argument("--batch-size", type=C.positive_int, default=32, metavar="N", help="default 32")
    p.add_argument("--img-size", type=C.image_size, metavar="N",
                   help="resolution of an image model (default: the checkpoint's input size)")
    p.add_argument("--reparam", action="store_true", help="run the re-parameterized (deploy) form (faster)")
    p.add_argument("--data", metavar="DIR", help="the dataset the inputs belong to, when the task uses it "
                                                "(e.g. COCO image ids)")
    p.add_argument("--text", metavar="SENTENCE", help="the sentence of a text-conditioned task (e.g. the object to "
                                                      "segment)")
    p.add_argument("--output", metavar="DIR", help="also write predictions.json (and any images) to DIR")
    C.add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unireplknet.engine.distributed import resolve_device
    from unireplknet.engine.task import Request
    from unireplknet.models import reparameterize
    from unireplknet.tasks import get_task

    device = resolve_device(args.device)
    model, meta, _ = C.model_from_args(args)
    if args.reparam:
        reparameterize(model)
    request = Request(inputs=list(args.inputs), batch_size=args.batch_size, device=device, topk=args.topk,
                             output=Path(args.output) if args.output else None, img_size=args.img_size,
                             data=args.data, text=args.text)
    C.report(get_task(meta.get("task")).predict(model, meta, request), args.output, "predictions.json")
    return 0
