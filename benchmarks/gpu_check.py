"""`make gpu-check`: every GPU measurement of the op and the model in one call, written to one JSON.

Parts, each in its own process under its own time budget (a failure or a timeout is recorded in the JSON and
the next part runs):
  tests       pytest tests/test_ops_*.py on the GPU (the Triton kernels against F.conv2d; xdist if present),
              less the ahead-of-time compile check, which needs no GPU (CI runs it)
  table1_*    benchmarks/dwconv_table1.py, Table 1's protocol (N=64, 24 layers, R 16/32/64, K 3…31), cuDNN vs
              ours, interleaved, CUDA-event medians, roofline; fwd and fwdbwd × float32 and bfloat16
  throughput  benchmarks/model_throughput.py: UniRepLKNet-A…S deploy form vs timm's convnextv2_atto…small,
              batch 128, 224², float32 and bfloat16, channels-last and NCHW
  train_step  benchmarks/dwconv_model_step.py: UniRepLKNet-S training step, "auto" vs F.conv2d everywhere
Then it derives the suggested ``GPU_MIN_K`` per dtype (the forward crossover over every R) and the issue's
goals. The default budgets sum to 460 s (``--scale`` stretches them). Output under ``--out`` (default $OUT,
else runs/gpu-check): gpu_check.json, tests.log, table1.log, model.log.

    make gpu-check                                   # = python benchmarks/gpu_check.py (PYTHONPATH=src)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ["unireplknet_a", "unireplknet_f", "unireplknet_p", "unireplknet_n", "unireplknet_t", "unireplknet_s"]
PEERS = ["convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_nano", "convnextv2_tiny",
         "convnextv2_small"]
#: paper Table 5, A100, img/s (the setting the throughput part repeats)
PAPER_A100 = dict(zip(OURS, [5942, 5173, 3949, 2807, 1804, 1265]))
#: (mode, dtype, seconds) of the four Table 1 runs
TABLE1 = [("fwd", "float32", 50), ("fwd", "bfloat16", 40), ("fwdbwd", "float32", 65), ("fwdbwd", "bfloat16", 55)]


def run_part(cmd: list[str], log: Path, timeout_s: float) -> dict:
    """Run cmd (appending its output to log) for at most timeout_s; status, rc, seconds and its output."""
    with log.open("a") as f:
        f.write(f"\n### {' '.join(cmd)}   (budget {timeout_s:.0f} s)\n")
        f.flush()
        start = f.tell()
        t0 = time.monotonic()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                         os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part's own process group
            rc, status = proc.wait(), "timeout"
    seconds = time.monotonic() - t0
    with log.open() as f:
        f.seek(start)
        out = f.read()
    return {"cmd": " ".join(cmd), "status": status, "rc": rc, "seconds": round(seconds, 1), "output": out}


def table_rows(text: str, names: list[str], text_cols: tuple[str, ...] = ()) -> list[dict]:
    """Markdown rows with len(names) cells whose other cells parse as numbers (a trailing 'x' allowed)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != len(names):
            continue
        try:
            rows.append({n: c if n in text_cols else float(c.rstrip("x")) for n, c in zip(names, cells)})
        except ValueError:
            continue
    return rows


TABLE1_COLS = ["R", "K", "cudnn_ms", "ours_ms", "speedup", "gflop", "min_mb", "compute_bound_ms", "memory_bound_ms",
               "ours_over_bound", "max_rel_err", "reps"]


def crossover(rows: list[dict]) -> int | str:
    """Smallest measured K from which ours beats cuDNN at every larger measured K and every R."""
    if not rows:
        return "not measured"
    best: int | str = "never (keep cuDNN)"
    for K in sorted({int(r["K"]) for r in rows}, reverse=True):
        if not all(r["speedup"] > 1.0 for r in rows if int(r["K"]) == K):
            break
        best = K
    return best


def goals(table1: dict[str, list[dict]]) -> list[dict]:
    """The GPU issue's goals, checked on the rows measured (met: None where no row applies)."""
    specs = [
        ("fwd", "forward faster than cuDNN for every K >= 7 at R >= 32", lambda r: r["K"] >= 7 and r["R"] >= 32,
         lambda r: r["speedup"] > 1.0),
        ("fwd", "forward >= 2x cuDNN for K >= 17 at R >= 32", lambda r: r["K"] >= 17 and r["R"] >= 32,
         lambda r: r["speedup"] >= 2.0),
        ("fwdbwd", "forward+backward faster than cuDNN for K >= 13", lambda r: r["K"] >= 13,
         lambda r: r["speedup"] > 1.0),
        ("fwd", "forward within 2x of the roofline bound at K = 31", lambda r: r["K"] == 31,
         lambda r: r["ours_over_bound"] <= 2.0),
    ]
    out = []
    for mode, rule, applies, ok in specs:
        for dtype in ("float32", "bfloat16"):
            rows = [r for r in table1.get(f"{mode}_{dtype}", []) if applies(r)]
            bad = [r for r in rows if not ok(r)]
            out.append({"goal": rule, "dtype": dtype, "rows": len(rows), "met": (not bad) if rows else None,
                        "misses": [{k: r[k] for k in ("R", "K", "speedup", "ours_over_bound")} for r in bad]})
    return out


def environment() -> dict:
    import torch

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    spec = importlib.util.find_spec("triton")
    if spec is not None:
        import triton

        env["triton"] = triton.__version__
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
    try:
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu",
             "--format=csv"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        env["nvidia_smi"] = f"unavailable: {err}"
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu-check"))
    p.add_argument("--scale", type=float, default=1.0, help="multiply every part's time budget")
    p.add_argument("--parts", nargs="+", default=["tests", "table1", "throughput", "train_step"],
                   choices=["tests", "table1", "throughput", "train_step"])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    b = ROOT / "benchmarks"
    report: dict = {"environment": environment(), "parts": {}}
    t0 = time.monotonic()

    if "tests" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            junit = Path(tmp) / "junit.xml"
            xdist = ["-n", "8"] if importlib.util.find_spec("xdist") else []
            files = sorted(str(t.relative_to(ROOT)) for t in (ROOT / "tests").glob("test_ops_*.py")
                           if t.name != "test_ops_triton_aot.py")  # the AOT compile needs no GPU: CI runs it
            part = run_part([py, "-m", "pytest", "-q", "-rfEs", *xdist, f"--junitxml={junit}", *files],
                            out / "tests.log", 90 * args.scale)
            if junit.exists():
                suite = ET.parse(junit).getroot().find("testsuite")
                part["result"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
                part["result"]["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                                            if c.find("failure") is not None or c.find("error") is not None]
        report["parts"]["tests"] = part

    table1: dict[str, list[dict]] = {}
    if "table1" in args.parts:
        for mode, dtype, budget in TABLE1:
            s = budget * args.scale
            part = run_part([py, str(b / "dwconv_table1.py"), "--device", "cuda", "--mode", mode, "--dtype", dtype,
                             "--res", "32", "64", "16", "--warmup", "2", "--reps", "15",
                             "--budget-s", f"{max(10.0, s - 20):.0f}"],
                            out / "table1.log", s)
            part["rows"] = table1[f"{mode}_{dtype}"] = table_rows(part["output"], TABLE1_COLS)
            report["parts"][f"table1_{mode}_{dtype}"] = part

    if "throughput" in args.parts:
        models = [f"{m}:deploy" for m in OURS] + PEERS
        for dtype in ("float32", "bfloat16"):
            part = run_part([py, str(b / "model_throughput.py"), "--device", "cuda", "--dtype", dtype,
                             "--batch-size", "128", "--img-size", "224", "--rounds", "4", "--iters", "3",
                             "--modes", "channels_last", "eager", "--reference", PEERS[0], "--models", *models],
                            out / "model.log", 60 * args.scale)
            rows = table_rows(part["output"], ["model", "mode", "img_s", "ratio"], ("model", "mode", "ratio"))
            ips = {(r["model"], r["mode"]): r["img_s"] for r in rows}
            part["pairs"] = [{"ours": o, "peer": pe, "mode": mode, "ours_img_s": ips.get((f"{o}:deploy", mode)),
                              "peer_img_s": ips.get((pe, mode)), "paper_a100_img_s": PAPER_A100[o]}
                             for o, pe in zip(OURS, PEERS) for mode in ("channels_last", "eager")]
            report["parts"][f"throughput_{dtype}"] = part

    if "train_step" in args.parts:
        part = run_part([py, str(b / "dwconv_model_step.py"), "--model", "unireplknet_s", "--batch", "64",
                         "--res", "224", "--device", "cuda", "--amp", "--reps", "5"], out / "model.log",
                        40 * args.scale)
        part["rows"] = table_rows(part["output"], ["step", "conv2d_ms", "auto_ms", "speedup"], ("step",))
        report["parts"]["train_step"] = part

    fwd = {dt: table1.get(f"fwd_{dt}", []) for dt in ("float32", "bfloat16")}
    report["gpu_min_k"] = {
        "suggested": {"float32": crossover(fwd["float32"]), "bfloat16": crossover(fwd["bfloat16"]),
                      "float16": crossover(fwd["bfloat16"])},
        "rule": "smallest measured K from which the Triton forward beats cuDNN at every larger K and every R; "
                "float16 is not timed and follows bfloat16",
        "fwdbwd_crossover": {dt: crossover(table1.get(f"fwdbwd_{dt}", [])) for dt in ("float32", "bfloat16")},
    }
    report["goals"] = goals(table1)
    report["seconds"] = round(time.monotonic() - t0, 1)
    for part in report["parts"].values():
        part.pop("output")  # the raw text is in the logs
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "gpu_check.json")

    print(f"# gpu-check on {report['environment'].get('gpu', 'no GPU')}: {report['seconds']} s; {out}/gpu_check.json")
    for name, part in report["parts"].items():
        print(f"  {name:28s} {part['status']:8s} {part['seconds']:6.1f} s")
    print(f"suggested GPU_MIN_K (ops/dispatch.py): {report['gpu_min_k']['suggested']}")
    for g in report["goals"]:
        print(f"  goal [{g['dtype']}] {g['goal']}: {g['met']}")


if __name__ == "__main__":
    main()
