"""Asymmetric large-kernel fusion (paper §3.4) against a naive float64 loop of the documented equation."""

from __future__ import annotations

import pytest
import torch

from unireplknet.layers.asymmetric_fusion import (
    AsymmetricFusion,
    asymmetric_conv1d,
    asymmetric_conv2d,
    same_padding,
)


def naive_1d(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z[b, i, j] = sum_k xpad[b, i + k, j] * y[b, k, j], left pad (L2 - 1) // 2, loops everywhere."""
    B, L1, D = x.shape
    L2 = y.shape[1]
    left = (L2 - 1) // 2
    z = torch.zeros(B, L1, D, dtype=torch.float64)
    for b in range(B):
        for i in range(L1):
            for j in range(D):
                for k in range(L2):
                    src = i + k - left
                    if 0 <= src < L1:
                        z[b, i, j] += x[b, src, j] * y[b, k, j]
    return z


def naive_2d(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    Kh, Kw = y.shape[-2:]
    top, left = (Kh - 1) // 2, (Kw - 1) // 2
    z = torch.zeros(B, C, H, W, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    for m in range(Kh):
                        for n in range(Kw):
                            si, sj = i + m - top, j + n - left
                            if 0 <= si < H and 0 <= sj < W:
                                z[b, c, i, j] += x[b, c, si, sj] * y[b, c, m, n]
    return z


def test_same_padding_keeps_length() -> None:
    assert same_padding(1) == (0, 0)
    assert same_padding(5) == (2, 2)
    assert same_padding(4) == (1, 2)


@pytest.mark.parametrize("method", ["conv", "fft"])
@pytest.mark.parametrize("L1,L2", [(7, 3), (6, 4), (5, 9), (8, 1)])
def test_1d_matches_naive_float64(method: str, L1: int, L2: int) -> None:
    g = torch.Generator().manual_seed(L1 * 10 + L2)
    x = torch.randn(2, L1, 3, dtype=torch.float64, generator=g)
    y = torch.randn(2, L2, 3, dtype=torch.float64, generator=g)
    z = asymmetric_conv1d(x, y, method=method)
    assert z.shape == x.shape
    torch.testing.assert_close(z, naive_1d(x, y), rtol=1e-10, atol=1e-10)  # float64 round-off only


def test_1d_per_sample_kernels_and_scale() -> None:
    x = torch.randn(3, 10, 4, dtype=torch.float64)
    y = torch.randn(3, 5, 4, dtype=torch.float64)
    z = asymmetric_conv1d(x, y, scale=0.5)
    for b in range(3):  # each sample only sees its own kernel
        torch.testing.assert_close(z[b:b + 1], 0.5 * naive_1d(x[b:b + 1], y[b:b + 1]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["conv", "fft"])
@pytest.mark.parametrize("ksize", [(3, 3), (5, 5), (2, 4), (7, 7)])
def test_2d_matches_naive_float64(method: str, ksize: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(ksize))
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=g)
    y = torch.randn(2, 3, *ksize, dtype=torch.float64, generator=g)
    z = asymmetric_conv2d(x, y, method=method)
    assert z.shape == x.shape
    torch.testing.assert_close(z, naive_2d(x, y), rtol=1e-10, atol=1e-10)


def test_float32_matches_float64() -> None:
    x = torch.randn(2, 300, 8, dtype=torch.float64)
    y = torch.randn(2, 200, 8, dtype=torch.float64)
    ref = asymmetric_conv1d(x, y, method="conv")
    for method in ("conv", "fft", "auto"):  # auto = fft at L2 = 200
        z = asymmetric_conv1d(x.float(), y.float(), method=method)
        torch.testing.assert_close(z.double(), ref, rtol=1e-4, atol=1e-4)  # float32 sums of 200 terms


@pytest.mark.parametrize("method", ["conv", "fft"])
def test_gradcheck_1d_and_2d(method: str) -> None:
    x = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: asymmetric_conv1d(a, b, method=method), (x, y))
    x2 = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    for k in ((3, 3), (2, 3)):
        y2 = torch.randn(1, 2, *k, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: asymmetric_conv2d(a, b, method=method), (x2, y2))


def test_errors() -> None:
    with pytest.raises(ValueError, match="feature width"):
        asymmetric_conv1d(torch.randn(1, 5, 4), torch.randn(1, 3, 6))
    with pytest.raises(ValueError, match="channels"):
        asymmetric_conv2d(torch.randn(1, 4, 5, 5), torch.randn(1, 3, 3, 3))
    with pytest.raises(ValueError, match="batch"):
        asymmetric_conv1d(torch.randn(2, 5, 4), torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="method"):
        asymmetric_conv1d(torch.randn(1, 5, 4), torch.randn(1, 3, 4), method="loop")
    with pytest.raises(ValueError, match="AsymmetricFusion"):
        AsymmetricFusion(8)(torch.randn(1, 5, 8), torch.randn(1, 3, 6))


def test_module_sequences_and_maps_backprop() -> None:
    m = AsymmetricFusion(8).double()
    x, y = torch.randn(2, 11, 8, dtype=torch.float64), torch.randn(2, 4, 8, dtype=torch.float64)
    out = m(x, y)
    assert out.shape == x.shape
    expect = x + m.proj_out(naive_1d(m.proj_x(x), m.proj_y(y)) / 4)
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    xm, ym = torch.randn(2, 8, 6, 6, dtype=torch.float64), torch.randn(2, 8, 3, 3, dtype=torch.float64)
    assert m(xm, ym).shape == xm.shape


def test_benchmark_models_share_the_parameter_budget() -> None:
    """benchmarks/fusion_vs_attention.py compares like with like: equal fusion parameter counts, same output."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fusion_vs_attention.py"
    spec = importlib.util.spec_from_file_location("fusion_vs_attention", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for dim in (16, 64):
        asym, attn = bench.make_fusion("asymmetric", dim), bench.make_fusion("cross-attention", dim)
        n = sum(p.numel() for p in asym.parameters())
        assert n == sum(p.numel() for p in attn.parameters()) == 4 * dim * (dim + 1)
    net = bench.TwoModalityNet("asymmetric", dim=8)
    assert net(torch.randn(3, 1, 8, 8), torch.randn(3, bench.SERIES_LEN, 1)).shape == (3, 2)
    rows = bench.cost_part([16], dim=8, batch=2, reps=1)
    assert [r["fusion"] for r in rows] == ["asymmetric (conv)", "asymmetric (fft)", "cross-attention"]
    assert all(r["saved_MiB"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows)
