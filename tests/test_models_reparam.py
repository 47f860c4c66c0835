"""Structural re-parameterization is exact (float64, < 1e-10) with every folded term randomized."""

import pytest
import torch
from torch import nn

import unireplknet
from tests.conftest import rel_error
from unireplknet.analysis.complexity import randomize_reparam_terms
from unireplknet.layers import DilatedReparamBlock, dilate_kernel
from unireplknet.models import UniRepLKNetBlock

TOL = 1e-10


@pytest.mark.parametrize("r,k", [(1, 3), (2, 3), (3, 5), (5, 3), (2, 7)])
def test_dilated_kernel_equals_dilated_conv(r, k):
    x = torch.randn(2, 3, 23, 19, dtype=torch.float64)
    w = torch.randn(3, 1, k, k, dtype=torch.float64)
    dense = dilate_kernel(w, r)
    assert dense.shape[-1] == (k - 1) * r + 1
    dilated = nn.functional.conv2d(x, w, padding=r * (k - 1) // 2, dilation=r, groups=3)
    plain = nn.functional.conv2d(x, dense, padding=dense.shape[-1] // 2, groups=3)
    assert rel_error(plain, dilated) < TOL


@pytest.mark.parametrize("kernel_size", [7, 13, 17])
def test_training_step_same_on_fast_cpu_path_and_official_conv2d(kernel_size):
    """The training form (batch statistics) with the CPU op's dilated backward against backend "torch" (plain
    F.conv2d, the official path): output and every gradient agree in float64 (< 1e-10), channels-last input."""
    gen = torch.Generator().manual_seed(kernel_size)
    fast = DilatedReparamBlock(5, kernel_size, backend="cpu").double().train()
    plain = DilatedReparamBlock(5, kernel_size, backend="torch").double().train()
    plain.load_state_dict(fast.state_dict())
    h, w = torch.randint(5, 30, (2,), generator=gen).tolist()
    x = torch.randn(2, 5, h, w, dtype=torch.float64, generator=gen).contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 5, h, w, dtype=torch.float64, generator=gen)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [block(xi) for block, xi in zip((fast, plain), xs)]
    assert "CpuDepthwiseConv2d" in type(fast.dil_branches[1][0](xs[0]).grad_fn).__name__
    for out in outs:
        out.backward(g)
    assert rel_error(outs[0], outs[1]) < TOL
    assert rel_error(xs[0].grad, xs[1].grad) < TOL
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert rel_error(a.grad, b.grad) < TOL, name


@pytest.mark.parametrize("kernel_size", [5, 7, 9, 11, 13, 15, 17])
def test_dilated_reparam_block_merges_exactly(kernel_size):
    gen = torch.Generator().manual_seed(kernel_size)
    block = randomize_reparam_terms(DilatedReparamBlock(6, kernel_size).double(), gen).eval()
    h, w = torch.randint(5, 30, (2,), generator=gen).tolist()  # including maps smaller than the kernel
    x = torch.randn(2, 6, h, w, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        got = block(x)
    assert block.deploy and not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d)) for m in block.modules())
    assert rel_error(got, expected) < TOL


@pytest.mark.parametrize("kernel_size", [0, 3, 5, 7, 9, 11, 13, 15, 17])
def test_block_reparameterizes_exactly(kernel_size):
    gen = torch.Generator().manual_seed(100 + kernel_size)
    torch.manual_seed(kernel_size)
    block = randomize_reparam_terms(UniRepLKNetBlock(8, kernel_size, layer_scale_init_value=1.0).double(), gen)
    for p in block.parameters():  # weights away from their small init as well
        p.data.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    block.eval()
    x = torch.randn(3, 8, 17, 15, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        got = block(x)
    names = [n for n, _ in block.named_parameters()]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())
    assert block.gamma is None and block.act[1].beta is None
    assert not any("dil_" in n for n in names)
    assert rel_error(got, expected) < TOL
    # a deploy-form block built directly has exactly the same parameter layout
    fresh = UniRepLKNetBlock(8, kernel_size, deploy=True)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in block.state_dict().items()}



@pytest.mark.parametrize("kernel_size", [0, 3, 13])
@pytest.mark.parametrize("deploy", [False, True])
def test_channels_first_export_path_is_the_same_function(kernel_size, deploy):
    """The ONNX export path (1×1 convs on NCHW) computes what the eager path does, both forms, float64."""
    gen = torch.Generator().manual_seed(200 + kernel_size)
    torch.manual_seed(kernel_size)
    block = randomize_reparam_terms(UniRepLKNetBlock(8, kernel_size, layer_scale_init_value=1.0).double(), gen)
    for p in block.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    block.eval()
    if deploy:
        block.reparameterize()
    x = torch.randn(2, 8, 13, 11, dtype=torch.float64, generator=gen)  # H·W > 4C: the folded per-sample path
    small = torch.randn(2, 8, 3, 2, dtype=torch.float64, generator=gen)  # H·W < C: the map-scaling path
    with torch.no_grad():
        for inp in (x, small):
            assert rel_error(block._channels_first_residual(inp), block._residual(inp)) < TOL

@pytest.mark.parametrize("name", ["unireplknet_a", "unireplknet_t"])
def test_whole_variant_reparameterizes_exactly(name):
    gen = torch.Generator().manual_seed(7)
    model = randomize_reparam_terms(unireplknet.create_model(name, num_classes=11).double(), gen).eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        expected = model(x)
        got = unireplknet.reparameterize(model)(x)
    assert rel_error(got, expected) < TOL
    deploy = unireplknet.create_model(name, num_classes=11, deploy=True)
    deploy.load_state_dict(model.state_dict(), strict=True)


def test_timm_reparameterize_model_works_too():
    timm_utils = pytest.importorskip("timm.utils", reason="timm extra")
    gen = torch.Generator().manual_seed(3)
    model = unireplknet.UniRepLKNet(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32),
                                    kernel_sizes=((3,), (7,), (13, 3), (17,)))
    model = randomize_reparam_terms(model.double(), gen).eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        expected = model(x)
        fused = timm_utils.reparameterize_model(model)  # a copy, converted module by module
        got = fused(x)
    assert rel_error(got, expected) < TOL
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # original untouched


def test_reparameterize_is_idempotent_and_float32_close(golden):
    model = unireplknet.UniRepLKNet(**golden["constructor"]).eval()
    model.load_state_dict(golden["train_state_dict"])
    model.reparameterize()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reparameterize()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
