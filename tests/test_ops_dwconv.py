"""dwconv2d / DepthwiseConv2d: torch and CPU backends, validation, dispatch, fallbacks (paper §3.1.1).

Numerics against float64 F.conv2d. Tolerances: float32 atol/rtol 1e-4 (sums of ≤ 51² products of unit
normals); float16/bfloat16 compared with a float32 reference at 2e-2 / 5e-2 relative to the output scale.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import dwconv_reference as _ref
from tests.conftest import rel_error
from unireplknet.ops import ENV_VAR, DepthwiseConv2d, dispatch, dwconv2d
from unireplknet.ops.cpu import (
    MAX_FAST_NCHW_WIDTH,
    _taps_are_faster,
    column_blocks,
    dilated_dwconv2d_cpu,
    dwconv2d_cpu,
    is_channels_last,
    weight_grad_gemm,
    weight_grad_taps,
)

KS = [3, 5, 7, 9, 13, 17, 31, 51]


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other column of a wider tensor
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _shape(gen: torch.Generator, K: int) -> tuple[int, int, int, int]:
    N = int(torch.randint(1, 3, (1,), generator=gen))
    C = int(torch.randint(1, 6, (1,), generator=gen))
    # H, W sometimes below K, never a multiple of a tile size by construction of the ranges
    H = int(torch.randint(1, K + 9, (1,), generator=gen))
    W = int(torch.randint(1, K + 9, (1,), generator=gen))
    return N, C, H, W


@pytest.mark.parametrize("backend", ["torch", "cpu", "auto"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("K", KS)
def test_forward_matches_float64(backend: str, layout: str, K: int) -> None:
    gen = torch.Generator().manual_seed(1000 * K + len(layout) + len(backend))
    N, C, H, W = _shape(gen, K)
    x = _layout(torch.randn(N, C, H, W, generator=gen), layout)
    w = torch.randn(C, 1, K, K, generator=gen)
    b = torch.randn(C, generator=gen) if K % 4 == 1 else None
    y = dwconv2d(x, w, b, backend=backend)
    assert y.shape == (N, C, H, W)
    torch.testing.assert_close(y.double(), _ref(x, w, b), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("strategy", ["split", "channels_last", "direct"])
@pytest.mark.parametrize("K", [13, 15, 17, 31])
def test_cpu_strategies_forward_and_grads(strategy: str, K: int, layout: str) -> None:
    gen = torch.Generator().manual_seed(K)
    N, C, H, W = 2, 3, 11, 23
    x = _layout(torch.randn(N, C, H, W, generator=gen), layout).requires_grad_()
    w = torch.randn(C, 1, K, K, generator=gen, requires_grad=True)
    b = torch.randn(C, generator=gen, requires_grad=True)
    g = torch.randn(N, C, H, W, generator=gen)
    y = dwconv2d_cpu(x, w, b, strategy=strategy)
    y.backward(g)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = _ref(xd, wd, bd)
    ref.backward(g.double())
    torch.testing.assert_close(y.double(), ref.detach(), atol=1e-4, rtol=1e-4)
    for got, want in ((x.grad, xd.grad), (w.grad, wd.grad), (b.grad, bd.grad)):
        torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_output_keeps_memory_format(layout: str) -> None:
    x = _layout(torch.randn(2, 8, 9, 9), layout)
    w = torch.randn(8, 1, 17, 17)
    y = dwconv2d(x, w, backend="cpu")
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert y.is_contiguous() == (layout == "contiguous")


@pytest.mark.parametrize("K,strategy", [(15, "split"), (15, "channels_last"), (5, "direct"), (3, "direct")])
def test_cpu_gradcheck_float64(K: int, strategy: str) -> None:
    gen = torch.Generator().manual_seed(K)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(2, 1, K, K, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: dwconv2d_cpu(*a, strategy=strategy), (x, w, b), fast_mode=True)


@pytest.mark.parametrize("layout,K,ours", [("contiguous", 3, False), ("contiguous", 5, True),
                                            ("channels_last", 11, False), ("channels_last", 13, True)])
def test_cpu_backward_is_ours_only_where_measured_faster(layout: str, K: int, ours: bool) -> None:
    """GEMM_WGRAD_MIN_K (NCHW) = 5, GEMM_WGRAD_MIN_K_NHWC = 13: below them oneDNN's own backward runs."""
    x = _layout(torch.randn(1, 2, 6, 6), layout).requires_grad_()
    y = dwconv2d_cpu(x, torch.randn(2, 1, K, K))
    assert ("CpuDepthwiseConv2d" in type(y.grad_fn).__name__) == ours


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("K", [3, 7, 13, 17, 31])
def test_cpu_float64_accumulates_in_float64(K: int, layout: str) -> None:
    """Float64 in, every output and gradient at float64 accuracy (rel ≤ 1e-12; a float32 sum gives ~1e-7)."""
    gen = torch.Generator().manual_seed(200 + K + len(layout))
    N, C, H, W = _shape(gen, K)
    x = _layout(torch.randn(N, C, H, W, dtype=torch.float64, generator=gen), layout).requires_grad_()
    w = torch.randn(C, 1, K, K, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(C, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(N, C, H, W, dtype=torch.float64, generator=gen) + 1 / 3  # a mean: float32 sums show
    y = dwconv2d(x, w, b, backend="cpu")
    y.backward(g)
    xd, wd, bd = (t.detach().clone().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xd, wd, bd, padding=K // 2, groups=C)
    ref.backward(g)
    for got, want in ((y, ref), (x.grad, xd.grad), (w.grad, wd.grad), (b.grad, bd.grad)):
        assert got.dtype == torch.float64
        assert rel_error(got, want) <= 1e-12


@pytest.mark.parametrize("K", [5, 9, 31])
def test_weight_grad_gemm_matches_float64(K: int) -> None:
    gen = torch.Generator().manual_seed(K)
    H, W = (int(v) for v in torch.randint(1, 40, (2,), generator=gen))
    N, C = 3, 4
    x = torch.randn(N, C, H, W, generator=gen)
    g = torch.randn(N, C, H, W, generator=gen)
    wd = torch.zeros(C, 1, K, K, dtype=torch.float64, requires_grad=True)
    F.conv2d(x.double(), wd, padding=K // 2, groups=C).backward(g.double())
    torch.testing.assert_close(weight_grad_gemm(x, g, K).double(), wd.grad, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,r", [(3, 2), (3, 5), (5, 3), (7, 2), (5, 1)])
def test_cpu_dilated_matches_float64(k: int, r: int, layout: str) -> None:
    """dwconv2d(dilation=r) on the CPU backend: forward and every gradient at float64 accuracy (rel ≤ 1e-12)
    against F.conv2d on random shapes, maps both smaller and larger than the dilated kernel's reach, so that
    both weight-gradient routes (per-tap sums and oneDNN's) run; the output keeps x's memory format."""
    gen = torch.Generator().manual_seed(100 * k + r + len(layout))
    routes = set()
    for _ in range(3):
        N, C, H, W = (int(torch.randint(1, 3, (1,), generator=gen)), int(torch.randint(1, 6, (1,), generator=gen)),
                      *(int(v) for v in torch.randint(2, 3 * r * k, (2,), generator=gen)))
        routes.add(_taps_are_faster(k, r, H, W))
        x = _layout(torch.randn(N, C, H, W, dtype=torch.float64, generator=gen), layout).requires_grad_()
        w = torch.randn(C, 1, k, k, dtype=torch.float64, generator=gen, requires_grad=True)
        b = torch.randn(C, dtype=torch.float64, generator=gen, requires_grad=True)
        g = torch.randn(N, C, H, W, dtype=torch.float64, generator=gen) + 1 / 3
        y = dwconv2d(x, w, b, backend="cpu", dilation=r)
        if r > 1:  # our backward (the r = 1 case follows the GEMM_WGRAD_MIN_K rule tested above)
            assert "CpuDepthwiseConv2d" in type(y.grad_fn).__name__
        assert is_channels_last(y) == is_channels_last(x)
        y.backward(g)
        xd, wd, bd = (t.detach().clone().requires_grad_() for t in (x, w, b))
        ref = F.conv2d(xd, wd, bd, padding=r * (k // 2), dilation=r, groups=C)
        ref.backward(g)
        for got, want in ((y, ref), (x.grad, xd.grad), (w.grad, wd.grad), (b.grad, bd.grad)):
            assert got.dtype == torch.float64
            assert rel_error(got, want) <= 1e-12


def test_cpu_dilated_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: dilated_dwconv2d_cpu(*a, dilation=3), (x, w, b), fast_mode=True)


@pytest.mark.parametrize("k,r", [(3, 1), (3, 4), (5, 2), (7, 3)])
def test_weight_grad_taps_matches_float64(k: int, r: int) -> None:
    """Float32 in, float32 sums: within 1e-4 relative of the float64 weight gradient."""
    gen = torch.Generator().manual_seed(k * r)
    H, W = (int(v) for v in torch.randint(1, 30, (2,), generator=gen))
    x = torch.randn(3, 4, H, W, generator=gen)
    g = torch.randn(3, 4, H, W, generator=gen)
    wd = torch.zeros(4, 1, k, k, dtype=torch.float64, requires_grad=True)
    F.conv2d(x.double(), wd, padding=r * (k // 2), dilation=r, groups=4).backward(g.double())
    got = weight_grad_taps(x, g, k, r)
    assert got.dtype == torch.float32
    assert rel_error(got.double(), wd.grad) <= 1e-5


def test_dilated_torch_backend_and_tracing_stay_plain_conv2d() -> None:
    """backend="torch" (the official path) and no-grad calls keep F.conv2d's own autograd node."""
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, requires_grad=True)
    assert "CpuDepthwiseConv2d" not in type(dwconv2d(x, w, backend="torch", dilation=2).grad_fn).__name__
    with torch.no_grad():
        assert dwconv2d(x, w, backend="cpu", dilation=2).grad_fn is None


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 2e-2)])
@pytest.mark.parametrize("K", [7, 31])
def test_cpu_low_precision_close_to_float32(dtype: torch.dtype, tol: float, K: int) -> None:
    gen = torch.Generator().manual_seed(K)
    x = torch.randn(2, 4, 13, 10, generator=gen)
    w = torch.randn(4, 1, K, K, generator=gen) / K
    y = dwconv2d(x.to(dtype), w.to(dtype), backend="cpu")
    assert y.dtype == dtype
    ref = _ref(x, w, None)
    assert (y.double() - ref).abs().max() <= tol * ref.abs().max()


def test_column_blocks_cover_kernel_with_fast_widths() -> None:
    for K in range(1, 80):
        blocks = column_blocks(K)
        assert sum(blocks) == K
        assert max(blocks) <= MAX_FAST_NCHW_WIDTH
        assert max(blocks) - min(blocks) <= 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(stride=2), dict(dilation=2), dict(padding=1), dict(stride=(1, 2), dilation=(2, 1))],
)
def test_unsupported_geometry_falls_back_to_conv2d(kwargs: dict) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 12, 11, generator=gen)
    w = torch.randn(3, 1, 5, 5, generator=gen)
    dil = kwargs.get("dilation", 1)
    dil = (dil, dil) if isinstance(dil, int) else dil
    pad = kwargs.get("padding", (2 * dil[0], 2 * dil[1]))
    want = F.conv2d(x, w, None, stride=kwargs.get("stride", 1), padding=pad, dilation=dil, groups=3)
    torch.testing.assert_close(dwconv2d(x, w, backend="cpu", **kwargs), want)


def test_non_square_odd_kernel_falls_back() -> None:
    x = torch.randn(1, 2, 8, 9)
    w = torch.randn(2, 1, 3, 7)
    torch.testing.assert_close(dwconv2d(x, w), F.conv2d(x, w, padding=(1, 3), groups=2))


@pytest.mark.parametrize(
    "weight_shape,bias_shape,backend,match",
    [
        ((4, 1, 4, 4), None, "auto", "odd"),
        ((4, 2, 5, 5), None, "auto", r"\(C, 1, K, K\)"),
        ((3, 1, 5, 5), None, "auto", "channels"),
        ((4, 1, 5, 5), (3,), "auto", "bias"),
        ((4, 1, 5, 5), None, "cuda", "unknown dwconv backend"),
        ((4, 5), None, "auto", r"\(C, 1, K, K\)"),
    ],
)
def test_bad_input_raises_one_line_value_error(weight_shape, bias_shape, backend, match) -> None:
    x = torch.randn(1, 4, 6, 6)
    b = None if bias_shape is None else torch.randn(*bias_shape)
    with pytest.raises(ValueError, match=match) as info:
        dwconv2d(x, torch.randn(*weight_shape), b, backend=backend)
    assert "\n" not in str(info.value)


def test_dtype_mismatch_and_bad_rank_raise() -> None:
    with pytest.raises(ValueError, match="dtype"):
        dwconv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        dwconv2d(torch.randn(2, 5, 5), torch.randn(2, 1, 3, 3))


def test_module_rejects_even_kernel_and_unknown_backend() -> None:
    with pytest.raises(ValueError, match="odd"):
        DepthwiseConv2d(4, 6)
    with pytest.raises(ValueError, match="unknown dwconv backend"):
        DepthwiseConv2d(4, 5, backend="fast")


def test_env_var_overrides_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(1, 2, 5, 5)
    monkeypatch.setenv(ENV_VAR, "torch")
    assert dispatch.resolve_backend(x, 17, "auto") == "torch"
    assert dispatch.resolve_backend(x, 17, "cpu") == "cpu"
    monkeypatch.setenv(ENV_VAR, "cpu")
    assert dispatch.resolve_backend(x, 17, "auto") == "cpu"
    monkeypatch.setenv(ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=ENV_VAR):
        dwconv2d(x, torch.randn(2, 1, 3, 3))


def test_auto_on_cpu_uses_cpu_path() -> None:
    assert dispatch.resolve_backend(torch.randn(1, 2, 5, 5), 31, "auto") == "cpu"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dwconv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3), backend="triton")


def test_compiling_tracing_and_export_route_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Export and tracing get F.conv2d; compiling keeps the CPU op (as custom ops) but not Triton."""
    x = torch.randn(1, 2, 5, 5)
    monkeypatch.setenv(ENV_VAR, "cpu")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert dispatch.resolve_backend(x, 31, "triton") == "torch"
    assert dispatch.resolve_backend(x, 31, "cpu") == "cpu"
    assert dispatch.resolve_backend(x, 31, "auto") == "cpu"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert dispatch.resolve_backend(x, 31, "cpu") == "torch"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,r", [(13, 1), (3, 1), (7, 2), (3, 5)])
def test_compiled_cpu_custom_ops_pass_opcheck(k: int, r: int, layout: str) -> None:
    """torch.library's own checks of the custom ops: schema, fake (shape-only) kernels, autograd registration."""
    from unireplknet.ops import compiled_cpu

    gen = torch.Generator().manual_seed(k + r)
    x = _layout(torch.randn(2, 3, 9, 8, dtype=torch.float64, generator=gen), layout).requires_grad_()
    w = torch.randn(3, 1, k, k, dtype=torch.float64, generator=gen, requires_grad=True)
    torch.library.opcheck(compiled_cpu._conv, (x, w, r, "channels_last"))
    g = torch.randn(2, 3, 9, 8, dtype=torch.float64, generator=gen)
    torch.library.opcheck(compiled_cpu._weight_grad, (x.detach(), g, w.detach(), r))


@pytest.mark.skipif(os.environ.get("UNIREPLKNET_SKIP_COMPILE") == "1", reason="compile tests disabled")
def test_compiled_training_step_calls_our_ops_and_matches_float64() -> None:
    """torch.compile of a Dilated Reparam Block's training step: one graph holding our custom ops (forward), and
    (through AOTAutograd) output and every gradient equal to eager F.conv2d in float64 (rel < 1e-10)."""
    from unireplknet.layers import DilatedReparamBlock

    gen = torch.Generator().manual_seed(5)
    fast = DilatedReparamBlock(4, 13, backend="cpu").double().train()
    plain = DilatedReparamBlock(4, 13, backend="torch").double().train()
    plain.load_state_dict(fast.state_dict())
    targets: list[str] = []

    def record(gm: torch.fx.GraphModule, inputs: list) -> object:
        targets.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    x = torch.randn(2, 4, 15, 11, dtype=torch.float64, generator=gen).contiguous(memory_format=torch.channels_last)
    torch.compile(fast, backend=record, fullgraph=True)(x)
    assert sum("unireplknet.dwconv2d_cpu" in t for t in targets) == 6  # the 13×13 conv and five branches
    torch._dynamo.reset()
    g = torch.randn(2, 4, 15, 11, dtype=torch.float64, generator=gen)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [torch.compile(fast, backend="aot_eager", fullgraph=True)(xs[0]), plain(xs[1])]
    for out in outs:
        out.backward(g)
    assert rel_error(outs[0], outs[1]) < 1e-10 and rel_error(xs[0].grad, xs[1].grad) < 1e-10
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert rel_error(a.grad, b.grad) < 1e-10, name


def test_jit_trace_records_a_single_convolution() -> None:
    m = DepthwiseConv2d(4, 17).eval()
    x = torch.randn(1, 4, 9, 9)
    traced = torch.jit.trace(m, x)
    kinds = [n.kind() for n in traced.graph.nodes()]
    assert kinds.count("aten::_convolution") == 1
    assert "aten::constant_pad_nd" not in kinds
    torch.testing.assert_close(traced(x), m(x))


@pytest.mark.skipif(os.environ.get("UNIREPLKNET_SKIP_COMPILE") == "1", reason="compile tests disabled")
def test_torch_compile_fullgraph_no_graph_break() -> None:
    m = DepthwiseConv2d(3, 17).eval()
    x = torch.randn(1, 3, 10, 10)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x))


def test_module_state_dict_and_reparam_assignment() -> None:
    m = DepthwiseConv2d(6, 13, bias=False)
    assert set(m.state_dict()) == {"weight"}
    assert m.weight.shape == (6, 1, 13, 13) and m.bias is None
    m2 = DepthwiseConv2d(6, 13, bias=True)
    assert set(m2.state_dict()) == {"weight", "bias"}
    with torch.no_grad():
        m.weight.copy_(torch.randn(6, 1, 13, 13))
    m.bias = torch.nn.Parameter(torch.randn(6))
    x = torch.randn(2, 6, 7, 8)
    torch.testing.assert_close(m(x).double(), _ref(x, m.weight, m.bias), atol=1e-4, rtol=1e-4)
    assert "kernel_size=13" in repr(m)


def test_module_training_step_grads_match_reference() -> None:
    gen = torch.Generator().manual_seed(5)
    m = DepthwiseConv2d(3, 31)
    x = torch.randn(2, 3, 12, 14, generator=gen, requires_grad=True)
    m(x).square().sum().backward()
    xd = x.detach().double().requires_grad_()
    wd = m.weight.detach().double().requires_grad_()
    bd = m.bias.detach().double().requires_grad_()
    _ref(xd, wd, bd).square().sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(m.weight.grad.double(), wd.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(m.bias.grad.double(), bd.grad, atol=1e-3, rtol=1e-4)


def test_cpu_autocast_casts_like_conv2d() -> None:
    m = DepthwiseConv2d(4, 17)
    x = torch.randn(2, 4, 9, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        want = F.conv2d(x, m.weight, m.bias, padding=8, groups=4)
    assert y.dtype == want.dtype == torch.bfloat16
    assert (y.double() - want.double()).abs().max() <= 2e-2 * want.abs().max()
    y.float().sum().backward()
    assert m.weight.grad is not None and m.weight.grad.dtype == torch.float32
