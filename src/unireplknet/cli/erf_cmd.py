"""`unireplknet erf`: the effective receptive field as in the paper's Fig. 2, one panel per model.

Models come from ``--checkpoint`` (repeatable) and/or ``--model NAME`` with one panel per ``--kernel-size``
(that kernel in stages 2-4, 3x3 in stage 1; e.g. ``--kernel-size 13 --kernel-size 3``). An untrained model
is built with layer scale 1 (instead of the training init 1e-6, which silences the blocks' branches) so its
ERF reflects the architecture. Writes ``erf.png`` and ``erf.json`` (area ratios for 20/30/50/99%).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from unireplknet.cli import _common as C
from unireplknet.data.datasets import IMG_EXTENSIONS
from unireplknet.errors import UserError
from unireplknet.models import load_model

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("erf", help="effective receptive field (paper Fig. 2) as a PNG, with area ratios",
                       description="Gradient of the central pixel of the last stage's map w.r.t. the "
                                   "input, averaged over images, log10(|grad| + 1): a PNG side by side and "
                                   "the area ratios.")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="a model from a checkpoint (repeat for several panels)")
    p.add_argument("--model", metavar="NAME", help="model name (with --kernel-size: untrained variants)")
    p.add_argument("--num-classes", type=C.positive_int, metavar="N",
                   help="classes of an official checkpoint")
    p.add_argument("--model-kwargs", type=C.json_dict, metavar="JSON", default=None,
                   help="extra constructor arguments for --model, e.g. '{\"depths\": [1, 1, 1, 1]}'")
    p.add_argument("--kernel-size", type=C.positive_int, action="append", default=[], metavar="K",
                   help="one --model panel per kernel size in stages 2-4 (repeatable; 3 = small, 5…17 = large)")
    p.add_argument("--data", metavar="DIR", help="folder of images (recursive); default random noise images")
    p.add_argument("--num-images", type=C.positive_int, default=8, metavar="N", help="default 8")
    p.add_argument("--img-size", type=C.image_size, default=256, metavar="N",
                   help="input resolution (the paper uses 1024; default 256 for CPUs)")
    p.add_argument("--output", metavar="DIR", default="erf",
                   help="folder for erf.png and erf.json (default ./erf)")
    p.add_argument("--seed", type=int, default=0, help="seed for random images and untrained weights")
    C.add_device_arg(p)
    p.set_defaults(func=run)


def _models(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, dict[str, Any]]]:
    from unireplknet.layers import DILATED_BRANCHES

    if args.kernel_size and args.model is None:
        raise UserError("--kernel-size builds untrained variants of --model NAME; add --model (e.g. unireplknet_a)")
    out = [(Path(ck).stem, *C.model_from_args(args, ck)[:2]) for ck in args.checkpoint]
    if args.model is not None and (args.kernel_size or not args.checkpoint):
        supported = sorted({3, *DILATED_BRANCHES})
        for k in args.kernel_size:
            if k not in supported:
                raise UserError(f"--kernel-size {k} is not supported; use one of {', '.join(map(str, supported))}")
        base = {"layer_scale_init_value": 1.0, **(args.model_kwargs or {})}
        for k in args.kernel_size or [None]:
            torch.manual_seed(args.seed)
            kwargs = dict(base, **({"kernel_sizes": k} if k is not None else {}))
            model, meta, _ = load_model(None, args.model, args.num_classes, kwargs)
            out.append((args.model + (f" K={k}" if k is not None else ""), model, meta))
    if not out:
        raise UserError("no model given; pass --model NAME [--kernel-size K ...] and/or --checkpoint PATH")
    return out


def _backbone_and_inputs(model: torch.nn.Module, meta: dict[str, Any], args: argparse.Namespace
                         ) -> tuple[torch.nn.Module, Iterable[torch.Tensor]]:
    """The network whose ERF is measured and its inputs: an image model and images, or — for another modality —
    the backbone and random maps shaped like the embedder's output (the backbone never knows the modality)."""
    from unireplknet.analysis import erf as E
    from unireplknet.tasks import get_task
    from unireplknet.tasks.classification import collect_files, load_image

    embedder = getattr(model, "embedder", None)
    if embedder is not None:
        if args.data:
            raise UserError(f"--data holds images; a {meta.get('task')} model's ERF is measured on its backbone with "
                            "random maps: drop --data")
        with torch.no_grad():
            z = embedder.eval()(get_task(meta.get("task")).example_input(meta, 1))
        shape = (z[0] if isinstance(z, tuple) else z).shape[1:]
        return model.backbone, E.random_images(args.num_images, tuple(shape[1:]), in_chans=shape[0], seed=args.seed)
    c = int((meta.get("input_size") or (3,))[0])
    if not args.data:
        return model, E.random_images(args.num_images, args.img_size, in_chans=c, seed=args.seed)
    from torchvision import transforms

    from unireplknet.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

    tf = transforms.Compose([transforms.Resize((args.img_size, args.img_size)), transforms.ToTensor(),
                             transforms.Normalize(meta.get("mean") or IMAGENET_MEAN, meta.get("std") or IMAGENET_STD)])
    files = collect_files([args.data], IMG_EXTENSIONS)[: args.num_images]
    return model, (load_image(f, tf, c).unsqueeze(0) for f in files)


def run(args: argparse.Namespace) -> int:
    from unireplknet.analysis import erf as E
    from unireplknet.engine.distributed import resolve_device

    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"data folder '{args.data}' does not exist; pass a folder of images or drop --data")
    device = resolve_device(args.device)
    maps: dict[str, Any] = {}
    ratios: dict[str, dict[float, float]] = {}
    for title, model, meta in _models(args):
        while title in maps:
            title += "'"
        net, images = _backbone_and_inputs(model, meta, args)
        try:
            erf = E.log_scale(E.compute_erf(net.to(device), images, device=device))
            ratios[title] = E.area_ratios(erf, E.THRESHOLDS)
        except ValueError as err:
            raise UserError(f"cannot compute the ERF of {title}: {err}") from err
        maps[title] = erf
        model.to("cpu")
    out_dir = Path(args.output)
    png = E.plot_erfs(maps, out_dir / "erf.png", ratios)
    area = {title: {f"{int(round(t * 100))}%": r for t, r in rs.items()} for title, rs in ratios.items()}
    C.report({"png": str(png), "img_size": args.img_size, "num_images": args.num_images,
              "images": args.data or "random", "area_ratio": area}, str(out_dir), "erf.json")
    return 0
