"""The family of Table 4/5: official key/shape tables, parameter counts and MACs (built on the meta device)."""

import pytest
import torch

import unireplknet
from unireplknet.analysis.complexity import count_macs, count_parameters
from unireplknet.models import VARIANTS

OFFICIAL = ["unireplknet_a", "unireplknet_f", "unireplknet_p", "unireplknet_n", "unireplknet_t",
            "unireplknet_s", "unireplknet_b", "unireplknet_l", "unireplknet_xl"]

# Table 5: GMACs of the deploy model, as printed (rounded) in the paper.
TABLE5_GMACS = {("unireplknet_a", 224): 0.6, ("unireplknet_f", 224): 0.9, ("unireplknet_p", 224): 1.6,
                ("unireplknet_n", 224): 2.8, ("unireplknet_t", 224): 4.9, ("unireplknet_s", 224): 9.1,
                ("unireplknet_s", 384): 26.7, ("unireplknet_b", 384): 47.2, ("unireplknet_l", 384): 105.4,
                ("unireplknet_xl", 384): 187.0}


def _shapes(model: torch.nn.Module) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_tables_and_param_counts_match_official(name, official_shapes):
    ref = official_shapes[name]
    with torch.device("meta"):
        train = unireplknet.create_model(name)
        deploy = unireplknet.create_model(name, deploy=True)
    assert list(_shapes(train).items()) == list(ref["train_state_dict"].items())  # same keys, in the same order
    assert list(_shapes(deploy).items()) == list(ref["deploy_state_dict"].items())
    assert count_parameters(train) == ref["train_params"]
    assert count_parameters(deploy) == ref["deploy_params"]


@pytest.mark.parametrize("name,res", sorted(TABLE5_GMACS))
def test_macs_round_to_table5(name, res):
    with torch.device("meta"):
        deploy = unireplknet.create_model(name, deploy=True)
    gmacs = count_macs(deploy, (3, res, res)) / 1e9
    digits = 0 if TABLE5_GMACS[(name, res)] >= 150 else 1
    assert round(gmacs, digits) == TABLE5_GMACS[(name, res)]


def test_h_variant_is_about_1_4b_params():
    with torch.device("meta"):
        h = unireplknet.create_model("unireplknet_h", deploy=True)
    assert h.dims == (480, 960, 1920, 3840) and h.depths == (3, 3, 27, 3)
    assert round(count_parameters(h) / 1e9, 1) in (1.3, 1.4)


def test_list_models_and_stage3_layout():
    assert unireplknet.list_models("unireplknet_*") == list(VARIANTS)
    assert unireplknet.list_models("unireplknet_x*") == ["unireplknet_xl"]
    dense = unireplknet.list_models("*rcnn*")
    assert len(dense) == 18 and "cascade_mask_rcnn_unireplknet_t" in dense and "mask_rcnn_unireplknet_xl" in dense
    with torch.device("meta"):
        t = unireplknet.create_model("unireplknet_t")
        s = unireplknet.create_model("unireplknet_s")
    assert t.kernel_sizes[2] == (13, 3) * 9  # T: 9 LarK + 9 SmaK interleaved
    assert s.kernel_sizes[2] == (13, 3, 3) * 9  # S/B/L/XL: 9 LarK + 18 SmaK
    assert all(k == 3 for k in s.kernel_sizes[0]) and all(k == 13 for k in s.kernel_sizes[3])


def test_default_kernel_sizes_need_a_known_depth_table():
    with pytest.raises(ValueError, match="no default kernel sizes for depths"):
        unireplknet.UniRepLKNet(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    model = unireplknet.UniRepLKNet(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), kernel_sizes=13)
    assert model.kernel_sizes == ((3,), (13,), (13,), (13,))
    with pytest.raises(ValueError, match="does not match depths"):
        unireplknet.UniRepLKNet(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), kernel_sizes=((3,), (13,), (13,)))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(unireplknet.errors.UnknownModelError, match="unknown model 'unireplknet_z'"):
        unireplknet.create_model("unireplknet_z")


def test_official_constructor_arguments_are_accepted():
    model = unireplknet.UniRepLKNet(in_chans=1, num_classes=7, depths=(2, 2, 6, 2), dims=(8, 16, 32, 64),
                                    drop_path_rate=0.1, layer_scale_init_value=1e-6, head_init_scale=0.5,
                                    kernel_sizes=None, deploy=False, with_cp=False, init_cfg=None,
                                    attempt_use_lk_impl=False, use_sync_bn=False)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    with pytest.raises(TypeError, match="unexpected arguments"):
        unireplknet.UniRepLKNet(depths=(2, 2, 6, 2), dims=(8, 16, 32, 64), not_an_argument=1)
