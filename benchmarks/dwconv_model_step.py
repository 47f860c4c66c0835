"""UniRepLKNet training step and deploy-form inference with the dwconv op: "auto" vs plain F.conv2d.

Same model, same weights, same input; the backend is switched through UNIREPLKNET_DWCONV_BACKEND
(torch = F.conv2d everywhere; auto = what the library picks). Interleaved reps, medians (ms).

    python benchmarks/dwconv_model_step.py --model unireplknet_s --batch 4 --res 224              # CPU
    python benchmarks/dwconv_model_step.py --model unireplknet_s --batch 64 --res 224 --device cuda --amp
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch

import unireplknet
from unireplknet.ops import ENV_VAR


def _timed(fn: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unireplknet_s")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    torch.manual_seed(0)
    train_model = unireplknet.create_model(args.model).to(dev).train()
    deploy_model = unireplknet.reparameterize(copy.deepcopy(train_model).eval()).to(dev)
    x = torch.randn(args.batch, 3, args.res, args.res, device=dev)
    opt = torch.optim.SGD(train_model.parameters(), lr=1e-3)
    amp = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext

    def train_step() -> None:
        with amp():
            loss = train_model(x).float().logsumexp(dim=1).mean()
        loss.backward()
        opt.zero_grad(set_to_none=True)  # measure fwd+bwd, keep the weights fixed between backends

    def infer() -> None:
        with torch.no_grad(), amp():
            deploy_model(x)

    saved = os.environ.get(ENV_VAR)
    times: dict[str, list[float]] = {}
    try:
        for backend in ("torch", "auto"):  # warm-up
            os.environ[ENV_VAR] = backend
            train_step()
            infer()
        for _ in range(args.reps):
            for backend in ("torch", "auto"):
                os.environ[ENV_VAR] = backend
                times.setdefault(f"train/{backend}", []).append(_timed(train_step, dev))
                times.setdefault(f"deploy/{backend}", []).append(_timed(infer, dev))
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved
    med = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {args.model}, x ({args.batch}, 3, {args.res}, {args.res}), {name}, amp={args.amp}, "
          f"median of {args.reps} interleaved reps")
    print("| step | F.conv2d ms | auto ms | F.conv2d / auto |")
    print("|---|---|---|---|")
    for step in ("train", "deploy"):
        a, b = med[f"{step}/torch"], med[f"{step}/auto"]
        print(f"| {step} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
