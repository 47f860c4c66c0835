"""The Triton kernels compiled ahead of time for sm_80 and sm_90, without a GPU (benchmarks/triton_aot.py).

Each kernel configuration the dispatcher can launch goes through ``triton.compile`` with a ``GPUTarget``
(TTIR → PTX → the ptxas triton ships → cubin), specialised as a launch on that GPU would be. Checked per
kernel: shared memory ≤ the target's opt-in limit per block (163 KB sm_80, 227 KB sm_90), registers ≤ 255
per thread and ≤ 64 K per block, and, for Table 1's K ≤ 31, spills of at most a few bytes (the tile choice
was fixed where ptxas spilled hundreds; K = 51 with fp32 on 16-wide maps still spills up to 64).
Fast: the largest tile of every kernel × dtype × target at K = 31 (18 compiles). Slow: every config for
odd K 3…31 and 51 (~2000 compiles). Each test prints its table (pytest -s).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

if importlib.util.find_spec("triton") is None:  # the suite needs triton; say so instead of skipping silently
    pytest.fail("tests/test_ops_triton_aot.py needs the triton package (pip install triton)", pytrace=False)

MAX_SPILL_BYTES = 16  # a few registers' worth


@pytest.fixture(scope="module")
def aot() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_aot.py"
    spec = importlib.util.spec_from_file_location("triton_aot", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["triton_aot"] = mod  # the process pool pickles its functions by module name
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # and a spawned worker imports it
    spec.loader.exec_module(mod)
    return mod


def _check(aot: ModuleType, rows: list[dict]) -> None:
    print("\n" + aot.summary(rows))
    errors = [r for r in rows if "error" in r]
    assert not errors, f"{len(errors)} kernels failed to compile, e.g. {json.dumps(errors[0])}"
    for r in rows:
        where = f"{r['kind']} {r['dtype']} K={r['K']} BM={r['BM']} BW={r['BW']} sm_{r['arch']}"
        assert 0 < r["smem"] <= aot.SMEM_LIMIT[r["arch"]], f"{where}: {r['smem']} bytes of shared memory"
        assert r["regs"] <= aot.MAX_REGS_PER_THREAD and r["regs"] * 32 * r["num_warps"] <= aot.REGS_PER_BLOCK, where
        if r["K"] <= 31:
            assert r["spill_stores"] <= MAX_SPILL_BYTES, f"{where}: {r['spill_stores']} bytes of spill stores"
        assert r["fits"], where


def test_largest_tile_of_every_kernel_dtype_and_target_compiles_within_limits(aot: ModuleType) -> None:
    rows = aot.run(aot.jobs(full=False))
    got = {(r["kind"], r["dtype"], r["arch"]) for r in rows}
    assert got == set(itertools.product(aot.KINDS, ("fp32", "bf16", "fp16"), (80, 90)))
    assert all(r["K"] == 31 and r["BW"] == 32 and r["DK"] == 64 for r in rows)
    _check(aot, rows)


def test_enumeration_covers_every_config_the_launchers_pick(aot: ModuleType) -> None:
    """Random shapes: the config the launcher picks is one of those the sweep compiles."""
    tk = aot.jit_kernels()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        rows, W = (int(v) for v in torch.randint(1, 4096, (2,), generator=gen))
        K = int(aot.KS[int(torch.randint(len(aot.KS), (1,), generator=gen))])
        for kind, dtype in itertools.product(aot.KINDS, ("fp32", "bf16", "fp16")):
            cfg = (tk.wgrad_config(rows, W, K, aot.CHANNELS, aot.DTYPES[dtype]) if kind == "wgrad"
                   else tk.fwd_config(rows, W, K, aot.DTYPES[dtype]))
            pick = {k: cfg[k] for k in ("BM", "BW", "DK", "num_warps")}
            swept = [{k: c[k] for k in pick} for c, _ in aot.configs(kind, dtype, K)]
            assert pick in swept, (kind, dtype, K, rows, W)


@pytest.mark.slow
def test_every_config_compiles_within_limits(aot: ModuleType) -> None:
    _check(aot, aot.run(aot.jobs(full=True), n_jobs=2))
