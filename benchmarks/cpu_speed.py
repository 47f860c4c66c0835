"""CPU speed of UniRepLKNet beside its ConvNeXt peer and the official implementation, measured in one run.

A cell is ``SOURCE:MODEL[:FORM]`` (FORM ``train`` (default) or ``deploy``, the re-parameterized form):

* ``ours:unireplknet_a:deploy`` — this checkout's src/;
* ``tree=PATH:unireplknet_a:deploy`` — another source tree's src/ (e.g. ``git archive <commit> src``), for A/B;
* ``timm:convnext_atto`` — a timm model;
* ``official:unireplknet_a`` — the official ``unireplknet.py`` given by ``--official PATH`` (kept outside this
  repository), with the same weights as ours (the official key layout is ours).

Modes: ``eager`` and ``compile`` (torch.compile, inductor) inference; ``ort`` (ONNX Runtime on the file that
``engine.export.export_onnx`` writes for that cell, opset 17, dynamic batch, ORT_ENABLE_ALL, ``--threads``
intra-op threads); ``train`` and ``train_compile`` (forward + backward, cross-entropy, training mode).

Every (cell, mode, batch) runs in a fresh process per round; each round shuffles the order; a first uncounted
round warms the caches of the compile and ort jobs (inductor, the exported files). Each process times
``--iters`` passes after warm-up and reports its median wall time and median process CPU time (with one
thread the CPU time is the steadier figure on a shared machine: it leaves out the time other jobs hold the
core). The table gives medians over rounds and the speed ratio to the ConvNeXt peer of the same size (the
median over rounds of peer time / cell time; > 1 is faster than the peer) and, for official and tree cells,
ours / theirs the same way.

    python benchmarks/cpu_speed.py --cells ours:unireplknet_a:deploy timm:convnext_atto --modes eager ort \\
        --batches 8 1 --rounds 9
    python benchmarks/cpu_speed.py --cells ours:unireplknet_a official:unireplknet_a timm:convnext_atto \\
        --modes train --official /tmp/official/unireplknet.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PEERS = {"unireplknet_a": "convnext_atto", "unireplknet_t": "convnext_tiny", "unireplknet_s": "convnext_small"}
MODES = ("eager", "compile", "ort", "train", "train_compile")

CHILD = r"""
import importlib.util, json, statistics, sys, time
import torch
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
source, name, form, mode, batch = a["source"], a["model"], a["form"], a["mode"], a["batch"]

def build():
    if source == "timm":
        import timm
        return timm.create_model(name)
    import unireplknet
    ours = unireplknet.create_model(name, deploy=form == "deploy" and source != "official")
    if source != "official":
        return ours
    spec = importlib.util.spec_from_file_location("official_unireplknet", a["official"])
    mod = sys.modules["official_unireplknet"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = getattr(mod, name)()
    model.load_state_dict(ours.state_dict())
    if form == "deploy":
        model.eval()
        model.reparameterize_unireplknet()
    return model

x = torch.randn(batch, 3, 224, 224)
model = build()
if mode == "ort":
    import onnxruntime as ort
    from pathlib import Path
    if not Path(a["onnx"]).exists():
        from unireplknet.engine.export import export_onnx
        export_onnx(model, a["onnx"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = a["threads"], 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(a["onnx"], sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    step = lambda: session.run(None, feed)
elif mode in ("train", "train_compile"):
    model.train()
    fwd = torch.compile(model) if mode == "train_compile" else model
    labels = torch.randint(0, 1000, (batch,))
    def step():
        torch.nn.functional.cross_entropy(fwd(x), labels).backward()
        for p in model.parameters():
            p.grad = None
else:
    model.eval()
    fwd = torch.compile(model) if mode == "compile" else model
    def step():
        with torch.no_grad():
            fwd(x)
for _ in range(2 if "compile" in mode else 1):
    step()
wall, cpu = [], []
for _ in range(a["iters"]):
    w, c = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - w)
    cpu.append(time.process_time() - c)
print(json.dumps({"wall": 1e3 * statistics.median(wall), "fastest": 1e3 * min(wall),
                  "cpu": 1e3 * statistics.median(cpu)}))
"""


def parse_cell(cell: str) -> dict:
    parts = cell.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("train", "deploy")):
        raise SystemExit(f"bad cell {cell!r}: use SOURCE:MODEL[:train|deploy]")
    source, model, form = parts[0], parts[1], parts[2] if len(parts) == 3 else "train"
    if source not in ("ours", "timm", "official") and not source.startswith("tree="):
        raise SystemExit(f"bad source in {cell!r}: use ours, timm, official or tree=PATH")
    name = f"timm:{model}" if source == "timm" else f"{source}:{model}:{form}"
    return {"cell": name, "source": source, "model": model, "form": form}


def run_job(job: dict, args: argparse.Namespace, onnx_dir: Path) -> dict:
    src = Path(job["source"][5:]).resolve() if job["source"].startswith("tree=") else SRC
    payload = {**job, "source": "ours" if job["source"].startswith("tree=") else job["source"],
               "threads": args.threads, "iters": args.iters, "official": args.official,
               "onnx": str(onnx_dir / (job["cell"].replace("/", "_").replace(":", "_") + ".onnx"))}
    env = os.environ | {"PYTHONPATH": str(src), "UNIREPLKNET_NO_TIMM": "1", "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"{job['cell']} {job['mode']} batch {job['batch']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", required=True, help="SOURCE:MODEL[:FORM], see above")
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=MODES)
    parser.add_argument("--batches", nargs="+", type=int, default=[8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3, help="timed passes per process")
    parser.add_argument("--official", help="path of the official unireplknet.py (for official: cells)")
    args = parser.parse_args()
    cells = [parse_cell(c) for c in args.cells]
    if any(c["source"] == "official" for c in cells) and not args.official:
        raise SystemExit("official: cells need --official PATH (the official unireplknet.py)")
    jobs = [{**c, "mode": m, "batch": b} for c in cells for m in args.modes for b in args.batches
            if not (m.startswith("train") and c["form"] == "deploy")]
    results: dict[tuple, list[dict]] = {}
    rng = random.Random(0)
    print(f"# load average before: {load()}", flush=True)
    print(" ".join(sys.argv), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        warm = [j for j in jobs if j["mode"] in ("compile", "ort", "train_compile")]
        for job in warm:
            run_job(job, args, Path(tmp))
        for r in range(args.rounds):
            rng.shuffle(jobs)
            for job in jobs:
                key = (job["cell"], job["mode"], job["batch"])
                results.setdefault(key, []).append(run_job(job, args, Path(tmp)))
            print(f"# round {r + 1}/{args.rounds} done, load {load()}", file=sys.stderr, flush=True)
    print(f"# load average after: {load()}")
    import torch

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"224x224, float32; medians over {args.rounds} shuffled rounds (fresh process each) of the median of "
          f"{args.iters} passes")
    print("| cell | mode | batch | wall ms | fastest ms | CPU ms | speed vs peer (wall) | (CPU) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key, runs in results.items():
        cell, mode, batch = key
        peer = PEERS.get(cell.split(":")[1])
        peer_runs = results.get((f"timm:{peer}", mode, batch))
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "fastest", "cpu")}
        ratio = ("-", "-")
        if peer_runs and not cell.startswith("timm:"):
            ratio = tuple(f"{statistics.median(p[k] / r[k] for p, r in zip(peer_runs, runs)):.2f}"
                          for k in ("wall", "cpu"))
        print(f"| {cell} | {mode} | {batch} | {med['wall']:.1f} | {med['fastest']:.1f} | {med['cpu']:.1f} | "
              f"{ratio[0]} | {ratio[1]} |")
    others = [k for k in results if k[0].startswith(("official:", "tree="))]
    if others:
        print("\n| ours / other (speed, median over rounds) | mode | batch | wall | CPU |\n|---|---|---:|---:|---:|")
    for cell, mode, batch in others:
        ours = results.get(("ours:" + ":".join(cell.split(":")[-2:]), mode, batch))
        if ours:
            theirs = results[(cell, mode, batch)]
            w, c = (statistics.median(t[k] / o[k] for t, o in zip(theirs, ours)) for k in ("wall", "cpu"))
            print(f"| ours vs {cell} | {mode} | {batch} | {w:.2f} | {c:.2f} |")


if __name__ == "__main__":
    main()
