"""benchmarks/gpu_check.py (`make gpu-check`) without a GPU: its parsing, crossover, goals and time budgets.

The one GPU session that runs it has minutes, not retries: whatever can go wrong on the CPU side is checked here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(R: int, K: int, speedup: float, bound: float = 1.5) -> str:
    """A row as benchmarks/dwconv_table1.py prints it on a GPU (12 cells)."""
    return (f"| {R} | {K} | {10 * speedup:.2f} | 10.00 | {speedup:.2f}x | 14.8 | 1210 | 0.22 | 0.25 | {bound:.2f} "
            f"| 3.1e-07 | 15 |")


def test_table_rows_reads_the_table1_format_and_skips_headers(gc: ModuleType) -> None:
    text = "\n".join(["# device: NVIDIA H200; ...",
                      "| R | K | cuDNN ms | ours ms | cuDNN/ours | GFLOP | min MB | compute-bound ms | memory-bound ms "
                      "| ours / bound | max rel err | reps |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|",
                      _row(32, 7, 1.25), _row(32, 9, 0.5), "# R=32: ours faster than cuDNN for every K >= None"])
    rows = gc.table_rows(text, gc.TABLE1_COLS)
    assert [(r["R"], r["K"], r["speedup"], r["reps"]) for r in rows] == [(32, 7, 1.25, 15), (32, 9, 0.5, 15)]
    assert rows[0]["max_rel_err"] == pytest.approx(3.1e-7)


def test_throughput_rows_keep_text_cells(gc: ModuleType) -> None:
    text = "| model | mode | img/s | ratio vs convnextv2_atto (same mode) |\n|---|---|---:|---:|\n" \
           "| unireplknet_a:deploy | channels_last | 6012.5 | 1.10 |\n| convnextv2_atto | eager | 5000.0 | - |"
    rows = gc.table_rows(text, ["model", "mode", "img_s", "ratio"], ("model", "mode", "ratio"))
    assert [(r["model"], r["img_s"], r["ratio"]) for r in rows] == [("unireplknet_a:deploy", 6012.5, "1.10"),
                                                                     ("convnextv2_atto", 5000.0, "-")]


def test_crossover_needs_every_larger_k_at_every_r(gc: ModuleType) -> None:
    rows = gc.table_rows("\n".join([_row(16, 7, 1.2), _row(16, 9, 0.9), _row(16, 13, 1.5), _row(32, 13, 1.1),
                                    _row(16, 31, 3.0), _row(32, 31, 2.5)]), gc.TABLE1_COLS)
    assert gc.crossover(rows) == 13  # K = 7 wins but K = 9 loses at R = 16
    rows.append(gc.table_rows(_row(64, 31, 0.99), gc.TABLE1_COLS)[0])
    assert gc.crossover(rows) == "never (keep cuDNN)"
    assert gc.crossover([]) == "not measured"


def test_goals_apply_their_r_and_k_ranges(gc: ModuleType) -> None:
    fwd = gc.table_rows("\n".join([_row(16, 9, 0.8), _row(32, 9, 1.3), _row(32, 17, 2.1, bound=2.5),
                                   _row(32, 31, 1.9, bound=1.8)]), gc.TABLE1_COLS)
    goals = {(g["goal"], g["dtype"]): g for g in gc.goals({"fwd_float32": fwd})}
    faster = goals[("forward faster than cuDNN for every K >= 7 at R >= 32", "float32")]
    assert faster["met"] is True and faster["rows"] == 3  # the R = 16 loss does not count
    twice = goals[("forward >= 2x cuDNN for K >= 17 at R >= 32", "float32")]
    assert twice["met"] is False and twice["misses"] == [{"R": 32, "K": 31, "speedup": 1.9, "ours_over_bound": 1.8}]
    assert goals[("forward within 2x of the roofline bound at K = 31", "float32")]["met"] is True
    assert goals[("forward+backward faster than cuDNN for K >= 13", "float32")]["met"] is None  # not measured


def test_run_part_records_failures_and_cuts_a_part_at_its_budget(gc: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "part.log"
    ok = gc.run_part([sys.executable, "-c", "print('| 1 | 2 |')"], log, 60)
    assert ok["status"] == "ok" and "| 1 | 2 |" in ok["output"]
    bad = gc.run_part([sys.executable, "-c", "raise SystemExit(3)"], log, 60)
    assert bad["status"] == "failed" and bad["rc"] == 3
    slow = gc.run_part([sys.executable, "-c", "import time; print('partial', flush=True); time.sleep(60)"], log, 2)
    assert slow["status"] == "timeout" and slow["seconds"] < 30 and "partial" in slow["output"]
    assert log.read_text().count("### ") == 3  # one log, a header per command
