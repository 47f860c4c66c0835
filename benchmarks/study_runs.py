"""What the dense studies (segmentation_study.py, detection_study.py) share: one training run per (variant,
seed) of a task's default recipe, skipped when its ``summary.json`` exists, run a few at a time."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser, variants: list[str], out: str) -> None:
    """The options every study takes: --out, --seeds, --variants, --parallel, --threads."""
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=variants, choices=variants)
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: the recipe's)")


def train(task: str, out: Path, variant: str, seed: int, flags: list[str], threads: int | None) -> Path:
    """``unireplknet train --task TASK`` with the variant's ``flags`` into ``out/<variant>-seed<seed>`` (skipped
    when its summary exists, so an interrupted study continues); returns the run folder."""
    run = out / f"{variant}-seed{seed}"
    if not (run / "summary.json").is_file():
        cmd = [sys.executable, "-m", "unireplknet", "train", "--task", task, "--seed", str(seed),
               "--output", str(run), "--overwrite", "--no-progress", *flags]
        if threads:
            cmd += ["--set", f"threads={threads}"]
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        logging.info("%s seed %d done in %.0f s", variant, seed, time.time() - t0)
    return run


def run_study(task: str, flags: dict[str, list[str]], args: argparse.Namespace) -> list[tuple[str, int, Path]]:
    """Every (variant, seed) of ``args`` trained, ``args.parallel`` at a time: [(variant, seed, run folder)]."""
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: train(task, args.out, job[0], job[1], flags[job[0]], args.threads), jobs))
    return [(v, s, run) for (v, s), run in zip(jobs, runs)]
