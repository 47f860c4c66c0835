"""`unireplknet export`: the deploy model to ONNX (dynamic batch), verified against onnxruntime."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unireplknet.cli import _common as C
from unireplknet.errors import UserError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the deploy model to ONNX and verify it with onnxruntime",
                       description="Re-parameterize (if needed), export to ONNX with a dynamic batch axis; prints "
                                   "the largest |onnxruntime - PyTorch| difference on random input.")
    C.add_model_args(p, checkpoint_required=True)
    p.add_argument("--output", metavar="PATH", help="ONNX file, or a folder (default: <checkpoint>.onnx)")
    p.add_argument("--img-size", type=C.image_size, metavar="N",
                   help="input resolution of an image model baked into the graph (default: its input size)")
    p.add_argument("--opset", type=C.positive_int, default=None, metavar="N", help="ONNX opset (14…20, default 17)")
    p.add_argument("--batch-size", type=C.positive_int, default=3, metavar="N",
                   help="batch of the random verification input (default 3; the graph takes any batch)")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="fail (exit 1) when the largest difference exceeds this (default 1e-3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unireplknet.engine.export import export_onnx, onnx_op_types, verify_onnx
    from unireplknet.models import reparameterize
    from unireplknet.tasks import get_task

    model, meta, _ = C.model_from_args(args)
    task = get_task(meta.get("task"))
    blocker = task.export_blocker(meta)
    if blocker:
        raise UserError(f"a {task.name} model cannot be exported to ONNX: {blocker}")
    src = Path(args.checkpoint)
    out = C.output_file(args.output, src.with_suffix(".onnx"), ".onnx", f"{src.stem}.onnx")
    x = task.example_input(meta, args.batch_size, args.img_size)
    reparameterized = not meta.get("deploy")
    if reparameterized:
        log.info("checkpoint is in training form: re-parameterizing before export")
        reparameterize(model)
    export_onnx(model.eval(), out, input_size=tuple(x.shape[1:]), opset=args.opset)
    diff = verify_onnx(model, out, x)
    ok = diff <= args.atol
    C.print_json({"output": str(out), "model": meta.get("model"), "input_size": list(x.shape[1:]),
                  "dynamic_batch": True, "reparameterized": reparameterized, "max_abs_diff": diff,
                  "verified_batch": args.batch_size, "has_batchnorm": "BatchNormalization" in onnx_op_types(out),
                  "ok": ok})
    if not ok:
        log.error("onnxruntime differs from PyTorch by %.3g > --atol %.3g", diff, args.atol)
        return 1
    return 0
