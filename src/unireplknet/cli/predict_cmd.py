"""`unireplknet predict`: image files -> top-k class names with probabilities (JSON)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from unireplknet.cli import _common as C
from unireplknet.errors import UserError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files: top-k labels and probabilities (JSON)",
                       description="Classify images (files or folders) with a checkpoint; prints, for each "
                                   "image, the top-k class names and softmax probabilities as JSON.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    C.add_model_args(p, checkpoint_required=True)
    p.add_argument("--topk", type=C.positive_int, default=5, metavar="K", help="labels per image (default 5)")
    p.add_argument("--batch-size", type=C.positive_int, default=32, metavar="N", help="default 32")
    p.add_argument("--img-size", type=C.positive_int, metavar="N",
                   help="resolution (default: the checkpoint's input size)")
    p.add_argument("--reparam", action="store_true", help="run the re-parameterized (deploy) form (faster)")
    p.add_argument("--output", metavar="DIR", help="also write the JSON to DIR/predictions.json")
    C.add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    device = C.resolve_device(args.device)
    from unireplknet.cli.task_cmds import IMAGE_TASKS, checkpoint_task, run_predict

    if checkpoint_task(args.checkpoint) not in IMAGE_TASKS:  # audio files / station CSVs
        model, meta = C.load_model(args.checkpoint, args.model, args.num_classes, args.model_kwargs)
        if args.reparam and not C.is_deploy(model):
            model.reparameterize()
        result = run_predict(args, model, meta, device)
        if args.output:
            C.write_json(result, Path(args.output) / "predictions.json")
        C.print_json(result)
        return 0
    paths = C.collect_images(args.images)
    for path in paths:  # fail before any work on a file that is not an image
        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise UserError(f"cannot read image '{path}' ({type(err).__name__}); "
                            "is it a valid image file?") from err
    model, meta = C.load_model(args.checkpoint, args.model, args.num_classes, args.model_kwargs)
    if args.reparam and not C.is_deploy(model):
        model.reparameterize()
    model.eval().to(device)
    c, _, _ = C.model_input_size(meta, args.img_size)
    transform = C.eval_transform(meta, args.img_size)
    names = list(meta.get("class_names") or [])
    results = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        batch = torch.stack([C.load_image(p, transform, c) for p in chunk])
        with torch.inference_mode():
            probs = model(batch.to(device)).float().softmax(dim=1).cpu()
        k = min(args.topk, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        for path, vals, idxs in zip(chunk, values.tolist(), indices.tolist()):
            results.append({"image": str(path), "predictions": [
                {"label": names[i] if i < len(names) else f"class_{i}", "index": i, "probability": v}
                for v, i in zip(vals, idxs)]})
    if args.output:
        C.write_json(results, Path(args.output) / "predictions.json")
    C.print_json(results)
    return 0
