"""`unireplknet export`: the deploy model to ONNX (dynamic batch), verified against onnxruntime."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from unireplknet.cli import _common as C
from unireplknet.errors import UserError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the deploy model to ONNX and verify it with onnxruntime",
                       description="Re-parameterize (if needed), export to ONNX with a dynamic batch axis; "
                                   "prints the largest |onnxruntime - PyTorch| difference on random input.")
    C.add_model_args(p, checkpoint_required=True)
    p.add_argument("--output", metavar="PATH", help="ONNX file, or a folder (default: <checkpoint>.onnx)")
    p.add_argument("--img-size", type=C.positive_int, metavar="N",
                   help="input resolution baked into the graph (default: the checkpoint's input size)")
    p.add_argument("--opset", type=C.positive_int, default=None, metavar="N", help="ONNX opset (default 17)")
    p.add_argument("--batch-size", type=C.positive_int, default=3, metavar="N",
                   help="batch of the random verification input (default 3; the graph takes any batch)")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="fail (exit 1) when the largest difference exceeds this (default 1e-3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unireplknet.engine.export import export_onnx, onnx_op_types, verify_onnx

    model, meta = C.load_model(args.checkpoint, args.model, args.num_classes, args.model_kwargs)
    src = Path(args.checkpoint)
    out = C.output_file(args.output, src.with_suffix(".onnx"), ".onnx", f"{src.stem}.onnx")
    reparameterized = not C.is_deploy(model)
    if reparameterized:
        log.info("checkpoint is in training form: re-parameterizing before export")
        model.reparameterize()
    input_size = C.model_input_size(meta, args.img_size)
    try:
        export_onnx(model.eval(), out, input_size=input_size, opset=args.opset)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); choose a writable --output") from err
    x = torch.randn(args.batch_size, *input_size, generator=torch.Generator().manual_seed(0))
    diff = verify_onnx(model, out, x)
    ops = onnx_op_types(out)
    ok = diff <= args.atol
    C.print_json({
        "output": str(out), "model": meta.get("model"), "input_size": list(input_size),
        "dynamic_batch": True, "reparameterized": reparameterized, "max_abs_diff": diff,
        "verified_batch": args.batch_size, "has_batchnorm": "BatchNormalization" in ops, "ok": ok,
    })
    if not ok:
        log.error("onnxruntime differs from PyTorch by %.3g > --atol %.3g", diff, args.atol)
        return 1
    return 0
