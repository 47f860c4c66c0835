"""timm conventions, features, gradient checkpointing, compile-friendliness."""

import copy

import pytest
import torch
from torch import nn

import unireplknet
from tests.conftest import rel_error
from unireplknet.analysis.complexity import randomize_reparam_terms
from unireplknet.models.unireplknet import POOL_TYPES

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (13,), (13, 3), (13,)))


def test_forward_head_pre_logits_and_reset_classifier():
    model = unireplknet.UniRepLKNet(num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 32, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    assert torch.allclose(model.forward_head(feats), model(x))
    model.reset_classifier(9)
    assert model(x).shape == (2, 9) and model.get_classifier().out_features == 9
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)


def test_grad_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = unireplknet.UniRepLKNet(num_classes=3, **TINY)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(plain, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6, rtol=1e-5)


def test_no_weight_decay_names_grn_gains():
    model = unireplknet.UniRepLKNet(**TINY)
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names and all(n in params and ".act.1." in n for n in names)


def test_group_matcher_drives_timm_layer_decay():
    optim = pytest.importorskip("timm.optim", reason="timm extra")
    model = unireplknet.UniRepLKNet(num_classes=4, **TINY)
    groups = optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5).param_groups
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) >= 4 and scales[-1] == 1.0  # the head learns fastest, the stem slowest
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_features_only_returns_four_normalized_strides():
    model = unireplknet.create_model("unireplknet_a", features_only=True)
    x = torch.randn(1, 3, 128, 96)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(1, 40, 32, 24), (1, 80, 16, 12), (1, 160, 8, 6), (1, 320, 4, 3)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert {f"norm{i}.weight" for i in range(4)} <= set(model.state_dict())
    assert "head.weight" not in model.state_dict()
    some = unireplknet.create_model("unireplknet_a", features_only=True, out_indices=(1, 3))
    assert [o.shape[1] for o in some(x)] == [80, 320] and some.feature_info.channels() == [80, 320]


def test_pretrained_cfg_is_attached():
    model = unireplknet.create_model("unireplknet_s")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["hf_hub_filename"] == "unireplknet_s_in1k_224_acc83.91.pth"
    assert cfg["mean"] == (0.485, 0.456, 0.406)


def test_compiles_without_graph_breaks():
    model = unireplknet.UniRepLKNet(num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    deploy = model.reparameterize()
    assert torch._dynamo.explain(deploy)(x).graph_break_count == 0


def test_train_mode_drop_path_and_batchnorm_update():
    model = unireplknet.UniRepLKNet(num_classes=3, drop_path_rate=0.5, **TINY).train()
    bn = model.stages[1][0].norm
    before = bn.running_mean.clone()
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    assert not torch.equal(before, bn.running_mean)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    assert rel_error(model(x), model(x)) == 0.0  # eval is deterministic


def _head_reference(model: unireplknet.UniRepLKNet, feats: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool, LayerNorm over channels (eps 1e-6), Linear, written out in float64 (per position for pool '')."""
    pooled = {"avg": feats.mean((2, 3)), "max": feats.amax((2, 3)),
              "avgmax": (feats.mean((2, 3)) + feats.amax((2, 3))) / 2, "": feats.permute(0, 2, 3, 1)}[pool]
    mu, var = pooled.mean(-1, keepdim=True), pooled.var(-1, unbiased=False, keepdim=True)
    normed = (pooled - mu) / torch.sqrt(var + 1e-6) * model.norm.weight + model.norm.bias
    logits = normed @ model.head.weight.T + model.head.bias
    return logits.permute(0, 3, 1, 2) if pool == "" else logits


@pytest.mark.parametrize("pool", POOL_TYPES)
def test_global_pool_types_match_a_float64_reference(pool):
    gen = torch.Generator().manual_seed(len(pool))
    model = unireplknet.UniRepLKNet(num_classes=5, global_pool=pool, **TINY).double().eval()
    with torch.no_grad():
        model.norm.weight.copy_(torch.rand(32, generator=gen, dtype=torch.float64) + 0.5)
        model.norm.bias.copy_(torch.randn(32, generator=gen, dtype=torch.float64))
    h, w = torch.randint(1, 6, (2,), generator=gen).tolist()
    feats = torch.randn(2, 32, h, w, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert rel_error(model.forward_head(feats), _head_reference(model, feats, pool)) < 1e-12
    model.reset_classifier(0)  # keeps the pooling: pooled (or per-position) normalized features
    assert model.forward_head(feats).shape == ((2, 32, h, w) if pool == "" else (2, 32))


def test_classifier_and_pool_removal_give_the_map():
    model = unireplknet.UniRepLKNet(num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        model.reset_classifier(0, "")
        out = model(x)
    assert out.shape == (2, 32, 2, 3) and model.num_classes == 0
    assert rel_error(out, nn.functional.layer_norm(feats.permute(0, 2, 3, 1), (32,), model.norm.weight,
                                                   model.norm.bias, 1e-6).permute(0, 3, 1, 2)) < 1e-6
    headless = unireplknet.create_model("unireplknet_a", num_classes=0, global_pool="")
    assert headless(torch.randn(1, 3, 64, 64)).shape == (1, 320, 2, 2)
    with pytest.raises(ValueError, match="global_pool='catavgmax' is not supported"):
        unireplknet.UniRepLKNet(global_pool="catavgmax", **TINY)
    with pytest.raises(ValueError, match="global_pool='token' is not supported"):
        model.reset_classifier(3, "token")


def test_reset_classifier_keeps_device_dtype_mode_and_pool():
    model = unireplknet.UniRepLKNet(num_classes=5, global_pool="max", drop_rate=0.3, **TINY).double().eval()
    model.reset_classifier(7)
    assert model.global_pool == "max" and model.head.weight.dtype == torch.float64 and not model.head.training
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        assert torch.equal(model(x), model(x))  # head dropout is off in eval


def _all_stage_maps(model: unireplknet.UniRepLKNet, x: torch.Tensor) -> list[torch.Tensor]:
    maps = []
    for downsample, stage in zip(model.downsample_layers, model.stages):
        x = stage(downsample(x))
        maps.append(x)
    return maps


def test_forward_intermediates_follow_timm_semantics():
    model = unireplknet.UniRepLKNet(num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = _all_stage_maps(model, x)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(inter) == 4 and all(torch.equal(a, b) for a, b in zip(inter, maps))
        assert [tuple(m.shape[1:]) for m in inter] == [(8, 16, 24), (16, 8, 12), (24, 4, 6), (32, 2, 3)]
        picks = {2: [2, 3], (0, -1): [0, 3], (1,): [1]}
        for indices, expected in picks.items():
            got = model.forward_intermediates(x, indices=indices, intermediates_only=True)
            assert len(got) == len(expected) and all(torch.equal(g, maps[i]) for g, i in zip(got, expected))
        final, inter = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(final, maps[1]) and torch.equal(inter[0], maps[1])
        nhwc = model.forward_intermediates(x, indices=[0], output_fmt="NHWC", intermediates_only=True)[0]
        assert torch.equal(nhwc, maps[0].permute(0, 2, 3, 1))
    for bad in (5, 0, [4], [-5]):
        with pytest.raises(ValueError, match="out of range|asks for the last"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt='NLC'"):
        model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("index", range(4))
def test_pruning_keeps_the_tap_and_leaves_no_unused_parameter(index):
    torch.manual_seed(index)
    model = unireplknet.UniRepLKNet(num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        tap = _all_stage_maps(model, x)[index]
        kept = copy.deepcopy(model)
        kept.prune_intermediate_layers([3], prune_head=False)
        assert torch.equal(kept(x), expected)  # nothing to prune
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([index]) == [index]
    assert len(pruned.stages) == index + 1 and pruned.num_features == TINY["dims"][index]
    with torch.no_grad():
        assert torch.equal(pruned.forward_intermediates(x, indices=[index], intermediates_only=True)[0], tap)
        assert torch.equal(pruned(x), tap)  # no head: the tap itself
    pruned.train()(x).sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())


@pytest.mark.parametrize("deploy", [False, True])
def test_torchscript_matches_eager(deploy):
    gen = torch.Generator().manual_seed(11)
    model = unireplknet.UniRepLKNet(num_classes=5, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32),
                                    kernel_sizes=((3,), (7,), (13, 5), (17,)), layer_scale_init_value=1.0)
    model = randomize_reparam_terms(model.double(), gen).eval()
    if deploy:
        model.reparameterize()
    x = torch.randn(2, 3, 61, 47, dtype=torch.float64, generator=gen)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert rel_error(scripted(x), model(x)) < 1e-12
