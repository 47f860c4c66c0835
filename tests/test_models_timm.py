"""With timm installed, the variants are timm models."""

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm extra")
import unireplknet  # noqa: E402,F401  (registers the variants)


def test_timm_create_model_with_new_class_count():
    model = timm.create_model("unireplknet_a", num_classes=10)
    assert isinstance(model, unireplknet.UniRepLKNet)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert "unireplknet_xl" in timm.list_models("unireplknet_*")
    assert timm.models.get_pretrained_cfg("unireplknet_s.in22k").input_size == (3, 224, 224)
    assert timm.models.get_pretrained_cfg("unireplknet_xl.in22k_to_in1k").input_size == (3, 384, 384)


def test_timm_features_only():
    model = timm.create_model("unireplknet_a", features_only=True, out_indices=(0, 2))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [40, 160]
    assert model.feature_info.reduction() == [4, 16]


def test_timm_data_config_resolves_from_pretrained_cfg():
    model = timm.create_model("unireplknet_b")
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 384, 384) and cfg["interpolation"] == "bicubic"
