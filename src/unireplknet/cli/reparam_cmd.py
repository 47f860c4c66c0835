"""`unireplknet reparam`: a training-form checkpoint -> a deploy-form checkpoint (paper §3.1).

Every Dilated Reparam Block and BatchNorm is merged into one depthwise conv with bias; the command reports the
largest output difference between both forms on random input and checks the written checkpoint rebuilds as a
deploy model that computes the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from unireplknet.cli import _common as C
from unireplknet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reparam", help="convert a training-form checkpoint to the deploy form",
                       description="Re-parameterize a checkpoint: merge the Dilated Reparam Blocks and BatchNorms "
                                   "into plain depthwise convs (exact), and save the deploy form.")
    C.add_model_args(p, checkpoint_required=True)
    p.add_argument("--output", metavar="PATH",
                   help="deploy checkpoint file, or a folder (default: <checkpoint>_deploy.pt next to it)")
    p.add_argument("--img-size", type=C.image_size, metavar="N",
                   help="resolution of an image model's random check input (default: its input size)")
    p.add_argument("--batch-size", type=C.positive_int, default=2, metavar="N",
                   help="batch of the random check input (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unireplknet.engine.finalize import output_difference
    from unireplknet.models import build_model_from_checkpoint, reparameterize
    from unireplknet.models.registry import is_deploy
    from unireplknet.tasks import get_task
    from unireplknet.utils.atomic import atomic_save

    model, meta, config = C.model_from_args(args)
    src = Path(args.checkpoint)
    if meta.get("deploy"):
        raise UserError(f"checkpoint '{src}' is already in deploy form; nothing to re-parameterize (use it directly "
                        "with eval/export/predict)")
    out = C.output_file(args.output, src.with_name(f"{src.stem}_deploy.pt"), ".pt", f"{src.stem}_deploy.pt")
    if out.resolve() == src.resolve():
        raise UserError(f"--output is the checkpoint itself ('{src}'): that would destroy it; write the deploy form "
                        "to another file")
    x = get_task(meta.get("task")).example_input(meta, args.batch_size, args.img_size)
    params_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        ref = model(x)
        got = reparameterize(model).eval()(x)
    atomic_save({"model": model.state_dict(), "meta": dict(meta, deploy=True),
                 **({"config": config} if config else {})}, out)
    reloaded, _ = build_model_from_checkpoint(out)  # the written file must rebuild as a deploy model
    with torch.no_grad():
        reload_diff = output_difference(reloaded.eval()(x), got)
    if not is_deploy(reloaded) or reload_diff > 1e-5:
        raise RuntimeError(f"the deploy checkpoint {out} does not reload exactly (diff {reload_diff:.3g})")
    C.print_json({"output": str(out), "model": meta.get("model"), "max_abs_diff": output_difference(ref, got),
                  "max_abs_output": float(ref.abs().max()) if isinstance(ref, torch.Tensor) else None,
                  "input_shape": list(x.shape),
                  "params_training": params_before, "params_deploy": sum(p.numel() for p in model.parameters())})
    return 0
