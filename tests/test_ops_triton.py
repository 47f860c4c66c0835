"""The Triton kernels (forward, grad-input, grad-weight) against float64 F.conv2d.

On a CUDA machine the suite runs on the GPU; without CUDA the same kernels run on CPU tensors through
Triton's interpreter (TRITON_INTERPRET=1, set here before the kernels are first imported), on small shapes.
Tolerances: float32 2e-4 abs+rel (fp32 is computed as TF32x3 on GPU, IEEE in the interpreter);
fp16/bf16 relative to the output scale against a float32 reference (1e-2 / 4e-2).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

if importlib.util.find_spec("triton") is None:  # the suite needs triton; say so instead of skipping silently
    pytest.fail("tests/test_ops_triton.py needs the triton package (pip install triton)", pytrace=False)

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
# The kernels become interpreter functions when decorated, so the variable must be set while they are first
# imported; it is put back afterwards (and set per test by the fixture) so it does not leak into other tests.
_saved = os.environ.get("TRITON_INTERPRET")
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
from tests.conftest import dwconv_reference as _ref  # noqa: E402
from tests.conftest import rel_error  # noqa: E402
from unireplknet.ops import DepthwiseConv2d, dwconv2d  # noqa: E402
from unireplknet.ops import triton_kernels as tk  # noqa: E402
from unireplknet.ops.autograd import dwconv2d_triton  # noqa: E402

if _saved is None:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = _saved

KS = [3, 5, 7, 9, 13, 17, 31, 51]


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("UNIREPLKNET_DWCONV_BACKEND", raising=False)


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return x.transpose(0, 1).contiguous().transpose(0, 1)  # (C, N, H, W) storage: non-contiguous NCHW
    return x


def _shape(gen: torch.Generator, K: int) -> tuple[int, int, int, int]:
    N = int(torch.randint(1, 3, (1,), generator=gen))
    C = int(torch.randint(1, 4, (1,), generator=gen))
    H = int(torch.randint(1, min(K, 12) + 8, (1,), generator=gen))
    W = int(torch.randint(1, min(K, 12) + 8, (1,), generator=gen))
    return N, C, H, W


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("K", KS)
def test_forward_matches_float64(K: int, layout: str) -> None:
    gen = torch.Generator().manual_seed(7 * K + len(layout))
    N, C, H, W = _shape(gen, K)
    x = _layout(torch.randn(N, C, H, W, generator=gen), layout).to(DEV)
    w = torch.randn(C, 1, K, K, generator=gen).to(DEV)
    b = torch.randn(C, generator=gen).to(DEV)
    y = dwconv2d(x, w, b if K % 4 == 1 else None, backend="triton")
    assert y.shape == (N, C, H, W)
    cl = torch.channels_last
    assert y.is_contiguous(memory_format=cl) == x.is_contiguous(memory_format=cl)
    torch.testing.assert_close(y.double(), _ref(x, w, b if K % 4 == 1 else None), atol=2e-4, rtol=2e-4)


def test_forward_multiple_tiles_in_rows_and_columns() -> None:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 2, 37, 45, generator=gen).to(DEV)  # N·H = 74 > BM, W = 45 > BW: ragged tiles
    w = torch.randn(2, 1, 9, 9, generator=gen).to(DEV)
    torch.testing.assert_close(tk.dwconv_fwd(x, w, None).double(), _ref(x, w, None), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("K", [3, 7, 17, 31])
def test_all_three_gradients_match_float64(K: int, layout: str) -> None:
    gen = torch.Generator().manual_seed(100 + K)
    N, C, H, W = _shape(gen, K)
    x = _layout(torch.randn(N, C, H, W, generator=gen), layout).to(DEV).requires_grad_()
    w = torch.randn(C, 1, K, K, generator=gen).to(DEV).requires_grad_()
    b = torch.randn(C, generator=gen).to(DEV).requires_grad_()
    g = torch.randn(N, C, H, W, generator=gen).to(DEV)
    dwconv2d(x, w, b, backend="triton").backward(g)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    _ref(xd, wd, bd).backward(g.double())
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=5e-4, rtol=2e-4)
    torch.testing.assert_close(w.grad.double(), wd.grad, atol=5e-4, rtol=2e-4)
    torch.testing.assert_close(b.grad.double(), bd.grad, atol=5e-4, rtol=2e-4)


def test_weight_grad_split_reduction_sums_partials() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 21, 19, generator=gen).to(DEV)
    g = torch.randn(2, 2, 21, 19, generator=gen).to(DEV)
    K = 7
    cfg = dict(tk.wgrad_config(42, 19, K, 2, torch.float32), BM=16, rows_per_split=16, splits=3)  # 3 splits × 16 rows
    gw = tk.dwconv_wgrad(x, g, K, config=cfg)
    xd = x.double().requires_grad_()
    wd = torch.zeros(2, 1, K, K, dtype=torch.float64, device=DEV, requires_grad=True)
    F.conv2d(xd, wd, padding=K // 2, groups=2).backward(g.double())
    torch.testing.assert_close(gw.double(), wd.grad, atol=5e-4, rtol=2e-4)


@pytest.mark.parametrize("K", [3, 5])
def test_gradcheck_float64(K: int) -> None:
    gen = torch.Generator().manual_seed(K)
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, generator=gen).to(DEV).requires_grad_()
    w = torch.randn(2, 1, K, K, dtype=torch.float64, generator=gen).to(DEV).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, generator=gen).to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(dwconv2d_triton, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("K", [3, 9, 31])
def test_float64_accumulates_in_float64(K: int, layout: str) -> None:
    """Float64 in, every output and gradient at float64 accuracy (rel ≤ 1e-12; a float32 sum gives ~1e-7)."""
    gen = torch.Generator().manual_seed(300 + K + len(layout))
    N, C, H, W = _shape(gen, K)
    x = _layout(torch.randn(N, C, H, W, dtype=torch.float64, generator=gen), layout).to(DEV).requires_grad_()
    w = torch.randn(C, 1, K, K, dtype=torch.float64, generator=gen).to(DEV).requires_grad_()
    b = torch.randn(C, dtype=torch.float64, generator=gen).to(DEV).requires_grad_()
    g = (torch.randn(N, C, H, W, dtype=torch.float64, generator=gen) + 1 / 3).to(DEV)  # float32 sums show
    y = dwconv2d(x, w, b, backend="triton")
    y.backward(g)
    xd, wd, bd = (t.detach().clone().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xd, wd, bd, padding=K // 2, groups=C)
    ref.backward(g)
    for got, want in ((y, ref), (x.grad, xd.grad), (w.grad, wd.grad), (b.grad, bd.grad)):
        assert got.dtype == torch.float64
        assert rel_error(got, want) <= 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)])
@pytest.mark.parametrize("K", [5, 31])
def test_low_precision_close_to_float32(dtype: torch.dtype, tol: float, K: int) -> None:
    gen = torch.Generator().manual_seed(K)
    x = torch.randn(2, 3, 10, 13, generator=gen).to(DEV)
    w = (torch.randn(3, 1, K, K, generator=gen) / K).to(DEV)
    b = torch.randn(3, generator=gen).to(DEV)
    xl, wl, bl = (t.to(dtype).requires_grad_() for t in (x, w, b))
    y = dwconv2d(xl, wl, bl, backend="triton")
    assert y.dtype == dtype
    ref = _ref(x, w, b)
    assert (y.double() - ref).abs().max() <= tol * ref.abs().max()
    g = torch.randn(2, 3, 10, 13, generator=gen).to(DEV)
    y.backward(g.to(dtype))
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    F.conv2d(xd, wd, padding=K // 2, groups=3).backward(g.double())
    assert wl.grad.dtype == dtype
    for got, want in ((xl.grad, xd.grad), (wl.grad, wd.grad)):
        assert (got.double() - want).abs().max() <= tol * want.abs().max()


def test_module_with_env_forced_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIREPLKNET_DWCONV_BACKEND", "triton")
    m = DepthwiseConv2d(3, 13).to(DEV)
    x = torch.randn(2, 3, 9, 11, device=DEV)
    torch.testing.assert_close(m(x).double(), _ref(x, m.weight, m.bias), atol=2e-4, rtol=2e-4)


def test_configs_respect_dot_minimums() -> None:
    for W in (1, 15, 16, 17, 64, 100):
        for K in (3, 31, 51, 63):
            for dt in (torch.float32, torch.bfloat16):
                cfg = tk.fwd_config(64 * W, W, K, dt)
                assert cfg["BM"] >= 16 and cfg["BW"] >= 16 and cfg["DK"] >= cfg["BW"] + K - 1
            wc = tk.wgrad_config(4 * W, W, K, 384, dt)
            assert wc["KB"] >= K and wc["DK"] >= wc["BW"] + K - 1
            assert wc["splits"] * wc["rows_per_split"] >= 4 * W
            assert (wc["splits"] - 1) * wc["rows_per_split"] < 4 * W


@pytest.mark.skipif(not CUDA, reason="needs CUDA: auto-dispatch to Triton happens only on GPU tensors")
def test_auto_on_gpu_matches_reference() -> None:
    m = DepthwiseConv2d(64, 31).cuda()
    x = torch.randn(4, 64, 32, 32, device="cuda")
    torch.testing.assert_close(m(x).double(), _ref(x, m.weight, m.bias), atol=2e-4, rtol=2e-4)
