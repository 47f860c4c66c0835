"""The Dilated Reparam Block's training-form branches on CPU: oneDNN's backward against the op's (issue 12).

Part ``pieces``: for each dilated branch (k, r) of a K = 13 block on UniRepLKNet-A's stage maps (batch 8,
channels-last), the forward and each gradient by oneDNN (``aten.convolution_backward``) beside the op's way:
grad input as the dilated forward with the flipped kernel, grad weight as one product-and-sum per tap.

Part ``block``: the training step (forward + backward) of one whole block, 13×13 conv + five dilated branches +
six BatchNorms, eager and compiled (inductor), with ``backend="torch"`` (plain F.conv2d, the official path)
against ``backend="cpu"`` (the op: its own backward in eager, its ``torch.library`` custom ops under compile).

Every figure is the median over ``--rounds`` rounds, each round timing every candidate in a shuffled order.

    PYTHONPATH=src python benchmarks/dilated_branch_backward.py --threads 1 --rounds 7
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unireplknet.layers import DILATED_BRANCHES, DilatedReparamBlock
from unireplknet.ops.cpu import weight_grad_taps

MAPS = [(80, 28), (160, 14), (320, 7)]  # UniRepLKNet-A's stages 2-4 at 224²: (channels, side)


def median_ms(fns: dict[str, Callable[[], object]], rounds: int, reps: int = 3) -> dict[str, float]:
    """name -> median over rounds of the per-call time in ms; each round runs the candidates shuffled."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    names = list(fns)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            for _ in range(reps):
                fns[name]()
            times[name].append((time.perf_counter() - t0) / reps * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def branch_times(channels: int, side: int, k: int, r: int, batch: int, rounds: int) -> dict[str, float]:
    """Forward and gradients of one dilated branch, oneDNN's and the op's, in ms."""
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    w = torch.randn(channels, 1, k, k)
    pad = r * (k // 2)

    def onednn(mask: list[bool]) -> Callable[[], object]:
        return lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, [1, 1], [pad, pad], [r, r], False, [0, 0], channels, mask)

    return median_ms({
        "fwd": lambda: F.conv2d(x, w, padding=pad, dilation=r, groups=channels),
        "dx": onednn([True, False, False]),
        "dx_flip": lambda: F.conv2d(g, w.flip(-1, -2), padding=pad, dilation=r, groups=channels),
        "dw": onednn([False, True, False]),
        "dw_taps": lambda: weight_grad_taps(x, g, k, r),
    }, rounds)


def pieces(batch: int, rounds: int) -> None:
    print("| map, branch | forward | grad input (oneDNN) | grad input as the flipped forward "
          "| grad weight (oneDNN) | grad weight per tap |")
    print("|---|---:|---:|---:|---:|---:|")
    for channels, side in MAPS:
        for k, r in zip(*DILATED_BRANCHES[13]):
            if r == 1:
                continue
            t = branch_times(channels, side, k, r, batch, rounds)
            print(f"| {channels}×{side}², k {k} r {r} | {t['fwd']:.2f} | {t['dx']:.2f} | {t['dx_flip']:.2f} | "
                  f"{t['dw']:.2f} | {t['dw_taps']:.2f} |", flush=True)


def block_times(channels: int, side: int, batch: int, rounds: int) -> dict[str, float]:
    """Training step of one K = 13 block, F.conv2d against the op, eager and compiled, in ms."""
    torch.manual_seed(0)
    plain = DilatedReparamBlock(channels, 13, backend="torch").train()
    fast = DilatedReparamBlock(channels, 13, backend="cpu").train()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn_like(x)

    def step(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        return lambda: model(x).backward(g)

    return median_ms({"eager_torch": step(plain), "eager_cpu": step(fast),
                      "compiled_torch": step(torch.compile(plain)), "compiled_cpu": step(torch.compile(fast))},
                     rounds)


def block(batch: int, rounds: int) -> None:
    print("| map | eager, F.conv2d | eager, the op | compiled, F.conv2d | compiled, the op |")
    print("|---|---:|---:|---:|---:|")
    for channels, side in MAPS:
        t = block_times(channels, side, batch, rounds)
        print(f"| {channels}×{side}² | {t['eager_torch']:.1f} | {t['eager_cpu']:.1f} | {t['compiled_torch']:.1f} "
              f"| {t['compiled_cpu']:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["pieces", "block"], choices=["pieces", "block"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    print(f"# torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, channels-last, float32, "
          f"median of {args.rounds} shuffled rounds, ms")
    for part in args.part:
        {"pieces": pieces, "block": block}[part](args.batch, args.rounds)


if __name__ == "__main__":
    main()
