"""`unireplknet reparam`: a training-form checkpoint -> a deploy-form checkpoint (paper Sec. 3.1).

Every Dilated Reparam Block and BatchNorm is merged into one depthwise conv with bias; the command reports
the largest output difference between both forms on random input and checks the written checkpoint loads
into a ``deploy=True`` model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from unireplknet.cli import _common as C
from unireplknet.errors import UserError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reparam", help="convert a training-form checkpoint to the deploy form",
                       description="Re-parameterize a checkpoint: merge the Dilated Reparam Blocks and "
                                   "BatchNorms into plain depthwise convs (exact), and save the deploy form.")
    C.add_model_args(p, checkpoint_required=True)
    p.add_argument("--output", metavar="PATH",
                   help="deploy checkpoint file, or a folder (default: <checkpoint>_deploy.pt next to it)")
    p.add_argument("--img-size", type=C.positive_int, metavar="N",
                   help="resolution of the random check input (default: the checkpoint's input size)")
    p.add_argument("--batch-size", type=C.positive_int, default=2, metavar="N",
                   help="batch of the random check input (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unireplknet.models.checkpoint import build_model_from_checkpoint

    model, meta = C.load_model(args.checkpoint, args.model, args.num_classes, args.model_kwargs)
    src = Path(args.checkpoint)
    if C.is_deploy(model):
        raise UserError(f"checkpoint '{src}' is already in deploy form; nothing to re-parameterize "
                        "(use it directly with eval/export/predict)")
    out = C.output_file(args.output, src.with_name(f"{src.stem}_deploy.pt"), ".pt", f"{src.stem}_deploy.pt")
    c, h, w = C.model_input_size(meta, args.img_size)
    x = torch.randn(args.batch_size, c, h, w, generator=torch.Generator().manual_seed(0))
    params_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        ref = model(x)
        model.reparameterize()
        got = model.eval()(x)
    diff = float((ref - got).abs().max())
    deploy_meta = dict(meta, deploy=True)
    C.save_checkpoint({"model": model.state_dict(), "meta": deploy_meta}, out)
    reloaded, _ = build_model_from_checkpoint(out)  # the written file must rebuild as a deploy model
    with torch.no_grad():
        reload_diff = float((reloaded.eval()(x) - got).abs().max())
    if not getattr(reloaded, "deploy", False) or reload_diff > 1e-5:
        raise RuntimeError(f"the deploy checkpoint {out} does not reload exactly (diff {reload_diff:.3g})")
    C.print_json({
        "output": str(out), "model": meta.get("model"), "max_abs_diff": diff,
        "max_abs_output": float(ref.abs().max()), "input_shape": list(x.shape),
        "params_training": params_before, "params_deploy": sum(p.numel() for p in model.parameters()),
    })
    return 0
