"""Where the CPU time of a model goes: each part's share of an inference pass or a training step.

Modes: ``eager`` (inference), ``train`` (forward + backward, cross-entropy) and ``compile`` (torch.compile inference)
profile with torch.profiler; ``ort`` profiles ONNX Runtime (ORT_ENABLE_ALL) on the file ``engine.export.export_onnx``
writes and also lists the node types of the graph before and after ORT's optimizations. Self times go to parts: by
the module an op runs in (forward hooks open a profiler range per module) and, for UniRepLKNet's functional block
code and ORT nodes, by the op itself; a backward op goes to the part of the forward op that made it (the autograd
sequence number). ``compile`` is grouped by kernel (each of inductor's generated kernels is profiled under its
name, ``cpp_fused_<ops>``, and kernels of the same name are one part).

    python benchmarks/cpu_profile.py --models unireplknet_a:deploy convnext_atto --modes eager ort --batch 8
    python benchmarks/cpu_profile.py --models unireplknet_a convnext_atto --modes train
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import tempfile
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

SCOPE = "scope:"
#: (pattern on the innermost module's qualified name or class, part); first match wins.
MODULE_PARTS = [
    (r"downsample_layers\.0|^stem", "stem"),
    (r"downsample", "downsampling"),
    (r"dil_branches\.\d+\.0$", "dilated branch convs"),
    (r"BatchNorm", "BatchNorm"),
    (r"lk_origin|DepthwiseConv2d|conv_dw|dwconv$", "depthwise conv (K x K)"),
    (r"LayerNorm", "LayerNorm"),
    (r"GELU", "GELU"),
    (r"mlp\.fc|pwconv|Linear", "FFN matmuls"),
    (r"^head|^norm$|head\.", "head"),
]
#: (pattern on an aten op or ORT node type, part), for ops no module above claims.
OP_PARTS = [
    (r"addmm|baddbmm|bmm|\bmm\b|matmul|linear|MatMul|Gemm", "FFN matmuls"),
    (r"gelu|Gelu", "GELU"),
    (r"vector_norm|pow|sqrt|square|ReduceSum|ReduceL2|Sqrt", "GRN norm"),
    (r"mean|adaptive_avg|sigmoid|relu|GlobalAveragePool|ReduceMean|Sigmoid|Relu", "SE"),
    (r"copy_|clone|contiguous|Transpose|Reorder|permute", "copies / layout"),
    (r"native_batch_norm", "BatchNorm"),
    (r"layer_norm|LayerNormalization", "LayerNorm"),
    (r"conv", "convolution (other)"),
]


def part_of(name: str, table: list[tuple[str, str]]) -> str | None:
    return next((part for pattern, part in table if re.search(pattern, name)), None)


def build(name: str) -> nn.Module:
    model_name, _, form = name.partition(":")
    if model_name.startswith("unireplknet"):
        import unireplknet

        return unireplknet.create_model(model_name, deploy=form == "deploy")
    import timm

    return timm.create_model(model_name)


def add_scopes(model: nn.Module) -> None:
    """Open a profiler range named after each module (qualified name and class) while it runs."""
    stack: list[record_function] = []

    def enter(label: str) -> Callable:
        def hook(*_: object) -> None:
            stack.append(record_function(label))
            stack[-1].__enter__()
        return hook

    def leave(*_: object) -> None:
        stack.pop().__exit__(None, None, None)

    for qualname, module in model.named_modules():
        if qualname:
            module.register_forward_pre_hook(enter(f"{SCOPE}{qualname}|{type(module).__name__}"))
            module.register_forward_hook(leave)


def torch_parts(model: nn.Module, step: Callable[[], None], iters: int, by_scope: bool) -> collections.Counter:
    """Self CPU time (us) per part over ``iters`` calls of ``step``."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step()
    events = prof.events()
    forward_part: dict[int, str] = {}
    parts: collections.Counter = collections.Counter()

    def scope_part(evt) -> str | None:  # innermost module scope that names a part
        while evt is not None:
            if evt.name.startswith(SCOPE):
                qualname, _, cls = evt.name[len(SCOPE):].partition("|")
                part = part_of(qualname, MODULE_PARTS) or part_of(cls, MODULE_PARTS)
                if part:
                    return part
            evt = evt.cpu_parent
        return None

    def op_part(evt) -> str:
        if not by_scope:
            return re.sub(r"graph_\d+_|_\d+$", "", evt.name) if "fused" in evt.name else evt.name
        return scope_part(evt) or part_of(evt.name, OP_PARTS) or "other"

    for evt in events:  # forward ops: remember their part by sequence number
        if evt.sequence_nr >= 0 and not evt.name.startswith("autograd::"):
            forward_part.setdefault(evt.sequence_nr, op_part(evt))
    for evt in events:
        if evt.name.startswith(SCOPE) or evt.self_cpu_time_total <= 0:
            continue
        owner, part = evt, None
        while owner is not None:
            if owner.name.startswith("autograd::engine::evaluate_function"):
                part = forward_part.get(owner.sequence_nr)
                if part is None:
                    part = part_of(owner.name, OP_PARTS) or "other (backward)"
                part += " (backward)"
                break
            owner = owner.cpu_parent
        parts[part or op_part(evt)] += evt.self_cpu_time_total
    return parts


def ort_parts(model: nn.Module, batch: int, threads: int, iters: int) -> tuple[collections.Counter, str]:
    import onnx
    import onnxruntime as ort

    from unireplknet.engine.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        opts.enable_profiling, opts.profile_file_prefix = True, os.path.join(tmp, "profile")
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: torch.randn(batch, 3, 224, 224).numpy()}
        for _ in range(iters + 1):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            trace = json.load(f)
        before = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
        after = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    parts: collections.Counter = collections.Counter()
    runs = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    for e in runs[len(runs) // (iters + 1):]:  # drop the first (warm-up) run
        node, op = e["name"][: -len("_kernel_time")], e["args"]["op_name"]
        if re.search(r"downsample_layers\.0|/stem", node):
            part = "stem"
        elif "downsample" in node:
            part = "downsampling"
        elif op == "Conv" and re.search(r"dwconv|conv_dw", node):
            part = "depthwise conv (K x K)"
        elif op == "Conv" and re.search(r"mlp|pwconv", node):
            part = "FFN matmuls"
        else:
            part = part_of(op, OP_PARTS) or ("elementwise (Mul, Add, ...)" if op in ("Mul", "Add", "Div") else op)
        parts[part] += e["dur"]
    graph = (f"{sum(before.values())} nodes exported: {dict(before.most_common(8))}; after ORT's optimizations "
             f"{sum(after.values())}: {dict(after.most_common(12))}")
    return parts, graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unireplknet_a:deploy", "convnext_atto"],
                        help="unireplknet_x[:deploy] or a timm name")
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "train", "compile", "ort"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--top", type=int, default=10, help="parts listed; the rest are summed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, 224x224, float32, "
          f"{args.iters} passes; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for mode in args.modes:
        for name in args.models:
            torch.manual_seed(0)
            model = build(name)
            x = torch.randn(args.batch, 3, 224, 224)
            graph = ""
            if mode == "ort":
                parts, graph = ort_parts(model.eval(), args.batch, args.threads, args.iters)
            elif mode == "train":
                add_scopes(model.train())
                labels = torch.randint(0, 1000, (args.batch,))

                def step(model: nn.Module = model, x: torch.Tensor = x, labels: torch.Tensor = labels) -> None:
                    nn.functional.cross_entropy(model(x), labels).backward()
                    model.zero_grad(set_to_none=True)

                parts = torch_parts(model, step, args.iters, by_scope=True)
            else:
                model.eval()
                if mode == "compile":
                    import torch._inductor.config as inductor_config

                    inductor_config.cpp.enable_kernel_profile = True  # each generated kernel gets its own range
                    model = torch.compile(model)
                else:
                    add_scopes(model)

                def step(model: nn.Module = model, x: torch.Tensor = x) -> None:
                    with torch.no_grad():
                        model(x)

                step()
                parts = torch_parts(model, step, args.iters, by_scope=mode == "eager")
            total = sum(parts.values())
            print(f"\n**{name}, {mode}** (profiled {total / args.iters / 1e3:.1f} ms a pass)")
            print("\n| part | share |\n|---|---:|")
            top = parts.most_common(args.top)
            for part, us in top:
                print(f"| {part} | {100 * us / total:.1f}% |")
            if len(parts) > len(top):
                print(f"| everything else | {100 * (total - sum(us for _, us in top)) / total:.1f}% |")
            if graph:
                print(f"\n{graph}")


if __name__ == "__main__":
    main()
