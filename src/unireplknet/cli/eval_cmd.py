"""`unireplknet eval`: top-1 / top-5 accuracy of a checkpoint on an image-folder dataset, as JSON.

The model is evaluated in its training form or, with ``--reparam``, re-parameterized (paper Sec. 3.1);
both must give the same accuracy up to float rounding.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from unireplknet.cli import _common as C
from unireplknet.errors import UserError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 accuracy of a checkpoint on a dataset (JSON)",
                       description="Evaluate a checkpoint on DIR/val/<class>/* (or DIR/<class>/*, or the "
                                   "embedded 'digits' validation split); prints top-1/top-5 as JSON.")
    C.add_model_args(p, checkpoint_required=True)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="dataset folder: DIR/val/<class>/*.jpg or DIR/<class>/*.jpg; or 'digits'")
    p.add_argument("--reparam", action="store_true", help="evaluate the re-parameterized (deploy) form")
    p.add_argument("--batch-size", type=C.positive_int, default=64, metavar="N", help="default 64")
    p.add_argument("--img-size", type=C.positive_int, metavar="N",
                   help="evaluation resolution (default: the checkpoint's input size)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="data-loading processes (default 0)")
    p.add_argument("--output", metavar="DIR", help="also write the JSON report to DIR/eval.json")
    C.add_device_arg(p)
    p.set_defaults(func=run)


def _dataset(data: str, meta: Mapping[str, Any], transform: Any, size: int, in_chans: int):
    from unireplknet.data.datasets import DigitsDataset, ImageFolderDataset

    if data == "digits":
        return DigitsDataset("val", transform, size=size, in_chans=in_chans)
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"data folder '{root}' does not exist; pass --data DIR with <class>/ image folders "
                        "(or DIR/val/<class>/)")
    if (root / "val").is_dir():
        root = root / "val"
    names = list(meta.get("class_names") or [])
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_names: list[str] | None = names or None
    if names and found and not set(found) & set(names):
        if len(found) > len(names):
            raise UserError(f"'{root}' has {len(found)} class folders but the model only {len(names)} "
                            "classes; evaluate on the classes it was trained on")
        log.warning("no folder of '%s' is named like a class of the checkpoint: folders are taken as class "
                    "indices in sorted order (the ImageNet convention)", root)
        class_names = None
    ds = ImageFolderDataset(root, transform, class_names=class_names, in_chans=in_chans)
    ds.check_readable()
    return ds


def evaluate(model: torch.nn.Module, loader: Any, device: torch.device, num_classes: int) -> dict[str, Any]:
    """Top-1 / top-k (k = min(5, classes)) accuracy in percent over ``loader``, skipping unreadable images."""
    from unireplknet.data.datasets import drop_corrupt

    k = min(5, num_classes)
    correct1 = correctk = seen = skipped = 0
    model.eval().to(device)
    with torch.inference_mode():
        for images, targets in loader:
            images, targets, n_bad = drop_corrupt(images, targets)
            skipped += n_bad
            if targets.numel() == 0:
                continue
            logits = model(images.to(device)).float().cpu()
            top = logits.topk(k, dim=1).indices
            hits = top == targets[:, None]
            correct1 += int(hits[:, 0].sum())
            correctk += int(hits.any(dim=1).sum())
            seen += targets.numel()
    if seen == 0:
        raise UserError("no image of the dataset could be read; check that the files are valid images")
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correctk / seen, "top5_k": k,
            "num_images": seen, "skipped_unreadable": skipped}


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    device = C.resolve_device(args.device)
    model, meta = C.load_model(args.checkpoint, args.model, args.num_classes, args.model_kwargs)
    if args.reparam and not C.is_deploy(model):
        model.reparameterize()
    if meta.get("task") not in (None, "classification"):  # audio, forecast: the task evaluates
        from unireplknet.cli.task_cmds import run_eval

        report = {**run_eval(args, model, meta, device), "form": "deploy" if C.is_deploy(model) else "training",
                  "checkpoint": str(args.checkpoint), "data": str(args.data), "device": str(device)}
        if args.output:
            C.write_json(report, Path(args.output) / "eval.json")
        C.print_json(report)
        return 0
    c, h, _ = C.model_input_size(meta, args.img_size)
    dataset = _dataset(args.data, meta, C.eval_transform(meta, args.img_size), h, c)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=max(args.workers, 0))
    head = getattr(model, "head", None)
    num_classes = head.out_features if isinstance(head, torch.nn.Linear) else len(meta["class_names"])
    result = evaluate(model, loader, device, num_classes)
    report = {**result, "form": "deploy" if C.is_deploy(model) else "training", "model": meta.get("model"),
              "checkpoint": str(args.checkpoint), "data": str(args.data), "img_size": h,
              "device": str(device)}
    if args.output:
        C.write_json(report, Path(args.output) / "eval.json")
    C.print_json(report)
    return 0
