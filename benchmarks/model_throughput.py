"""Model throughput (img/s) of UniRepLKNet beside timm's ConvNeXt peers, measured in the same run.

Each round times every (model, mode) a few times in a freshly shuffled order (the machine is shared and
noisy), and the figure is the median over rounds. Modes: eager NCHW, channels-last, and (with --compile)
torch.compile. Ours is shown in training form (eval mode) and deploy form (re-parameterized). On CUDA each
pass is timed with CUDA events (analysis/throughput.py); ``--dtype bfloat16`` runs the models in bf16.

    python benchmarks/model_throughput.py --threads 2 --batch-size 8 --img-size 224 --rounds 7
    python benchmarks/model_throughput.py --device cuda --batch-size 128 --modes channels_last --dtype bfloat16 \
        --models unireplknet_a:deploy convnextv2_atto --reference convnextv2_atto
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics

import torch

import unireplknet
from unireplknet.analysis.throughput import measure_throughput


def build(name: str) -> torch.nn.Module:
    if name.startswith("unireplknet"):
        base, _, form = name.partition(":")
        return unireplknet.create_model(base, deploy=form == "deploy").eval()
    import timm

    return timm.create_model(name).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unireplknet_a:train", "unireplknet_a:deploy",
                                                         "convnext_atto", "convnextv2_atto"])
    parser.add_argument("--reference", default="convnext_atto", help="the peer the ratio is taken against")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3, help="timed passes per model per round")
    parser.add_argument("--modes", nargs="+", default=["eager", "channels_last"],
                        choices=["eager", "channels_last", "compile"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cells = {}
    for mode in args.modes:
        for name in args.models:
            model = build(name)
            if mode == "compile":
                model = torch.compile(model)
            cells[(name, mode)] = model
    times: dict[tuple[str, str], list[float]] = {key: [] for key in cells}
    for key, model in cells.items():  # warm-up (and compilation) outside the timed rounds
        measure_throughput(model, args.batch_size, args.img_size, args.device, dtype,
                           channels_last=key[1] == "channels_last", warmup=1, iters=1)
    order, rng = list(cells), random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for key in order:
            r = measure_throughput(cells[key], args.batch_size, args.img_size, args.device, dtype,
                                   channels_last=key[1] == "channels_last", warmup=0, iters=args.iters)
            times[key].append(r["latency_ms_median"])

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor()
                                                                                 or platform.machine())
    print(f"# {where}, torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
          f"{args.img_size}x{args.img_size}, {args.device}, {args.dtype}, median of {args.rounds} shuffled "
          f"rounds x {args.iters} passes")
    print(f"| model | mode | img/s | ratio vs {args.reference} (same mode) |")
    print("|---|---|---:|---:|")
    for mode in args.modes:
        ref_key = (args.reference, mode)
        ref_ips = args.batch_size / (statistics.median(times[ref_key]) / 1e3) if ref_key in times else None
        for name in args.models:
            ips = args.batch_size / (statistics.median(times[(name, mode)]) / 1e3)
            ratio = f"{ips / ref_ips:.2f}" if ref_ips else "-"
            print(f"| {name} | {mode} | {ips:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
