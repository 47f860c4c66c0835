"""`unireplknet erf`: the effective receptive field as in the paper's Fig. 2, one panel per model.

Models come from ``--checkpoint`` (repeatable) and/or ``--model NAME`` with one panel per ``--kernel-size``
(that kernel in stages 2-4, 3x3 in stage 1; e.g. ``--kernel-size 13 --kernel-size 3``). An untrained model
is built with layer scale 1 (instead of the training init 1e-6, which silences the blocks' branches) so its
ERF reflects the architecture. Writes ``erf.png`` and ``erf.json`` (area ratios for 20/30/50/99%).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from unireplknet.cli import _common as C
from unireplknet.errors import UserError

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
                   help="one --model panel per kernel size in stages 2-4 (repeatable; odd, 3 = small)")
    p.add_argument("--data", metavar="DIR", help="folder of images (recursive); default random noise images")
    p.add_argument("--num-images", type=C.positive_int, default=8, metavar="N", help="default 8")
    p.add_argument("--img-size", type=C.positive_int, default=256, metavar="N",
                   help="input resolution (the paper uses 1024; default 256 for CPUs)")
    p.add_argument("--output", metavar="DIR", default="erf",
                   help="folder for erf.png and erf.json (default ./erf)")
    p.add_argument("--seed", type=int, default=0, help="seed for random images and untrained weights")
    C.add_device_arg(p)
    p.set_defaults(func=run)


def _models(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, dict[str, Any]]]:
    if args.kernel_size and args.model is None:
        raise UserError("--kernel-size builds untrained variants of --model NAME; "
                        "add --model (e.g. unireplknet_a)")
    out = []
    for ck in args.checkpoint:
        model, meta = C.load_model(ck, args.model, args.num_classes, None)
        out.append((Path(ck).stem, model, meta))
    if args.model is not None and (args.kernel_size or not args.checkpoint):
        for k in args.kernel_size:
            if k != 3 and (k % 2 == 0 or k < 7):
                raise UserError(f"--kernel-size {k} is not supported; use 3 or an odd size >= 7 (e.g. 13)")
        base = {"layer_scale_init_value": 1.0, **(args.model_kwargs or {})}
        if args.num_classes:
            base["num_classes"] = args.num_classes
        for k in args.kernel_size or [None]:
            torch.manual_seed(args.seed)
            kwargs = dict(base, **({"kernel_sizes": k} if k is not None else {}))
            model, meta = C.load_model(None, args.model, None, kwargs)
            out.append((args.model + (f" K={k}" if k is not None else ""), model, meta))
    if not out:
        raise UserError("no model given; pass --model NAME [--kernel-size K ...] and/or --checkpoint PATH")
    return out


def _folder_images(folder: str, num: int, size: int, meta: dict[str, Any]) -> Iterator[torch.Tensor]:
    from torchvision import transforms

    paths = C.collect_images([folder])[:num]
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(meta.get("mean") or C.IMAGENET_MEAN,
                                                  meta.get("std") or C.IMAGENET_STD)])
    c = C.model_input_size(meta)[0]
    for path in paths:
        yield C.load_image(path, tf, c).unsqueeze(0)


def run(args: argparse.Namespace) -> int:
    from unireplknet.analysis import erf as E

    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"data folder '{args.data}' does not exist; pass a folder of images or drop --data")
    device = C.resolve_device(args.device)
    models = _models(args)
    maps: dict[str, Any] = {}
    ratios: dict[str, dict[float, float]] = {}
    for title, model, meta in models:
        while title in maps:
            title += "'"
        c = C.model_input_size(meta)[0]
        images: Iterable[torch.Tensor] = (
            _folder_images(args.data, args.num_images, args.img_size, meta) if args.data
            else E.random_images(args.num_images, args.img_size, in_chans=c, seed=args.seed))
        try:
            erf = E.log_scale(E.compute_erf(model.to(device), images, device=device))
            ratios[title] = E.area_ratios(erf, E.THRESHOLDS)
        except ValueError as err:
            raise UserError(f"cannot compute the ERF of {title}: {err}") from err
        maps[title] = erf
        model.to("cpu")
    out_dir = Path(args.output)
    png = E.plot_erfs(maps, out_dir / "erf.png", ratios)
    area = {title: {f"{int(round(t * 100))}%": r for t, r in rs.items()} for title, rs in ratios.items()}
    report = {"png": str(png), "img_size": args.img_size, "num_images": args.num_images,
              "images": args.data or "random", "area_ratio": area}
    C.write_json(report, out_dir / "erf.json")
    C.print_json(report)
    return 0
