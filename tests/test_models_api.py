"""timm conventions, features, gradient checkpointing, compile-friendliness."""

import pytest
import torch

import unireplknet
from tests.conftest import rel_error

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
