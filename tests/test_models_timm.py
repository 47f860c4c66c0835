"""With timm installed, the variants are timm models: module 'unireplknet', pretrained loading through timm's
builder (tags, overlays, in_chans), features_only, FX. Pretrained weights come from a stand-in hub cache."""

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm extra")
import unireplknet  # noqa: E402  (registers the variants)
from tests.conftest import rel_error  # noqa: E402
from tests.fake_hub import constant_release, release  # noqa: E402
from unireplknet.analysis.complexity import randomize_reparam_terms  # noqa: E402
from unireplknet.models.checkpoint import adapt_input_conv  # noqa: E402
from unireplknet.models.pretrained import CHECKPOINT_FILES, IN22K_CLASSES  # noqa: E402


def test_timm_create_model_with_new_class_count():
    model = timm.create_model("unireplknet_a", num_classes=10)
    assert isinstance(model, unireplknet.UniRepLKNet)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert "unireplknet_xl" in timm.list_models("unireplknet_*")
    assert timm.models.get_pretrained_cfg("unireplknet_s.in22k").input_size == (3, 224, 224)
    assert timm.models.get_pretrained_cfg("unireplknet_xl.in22k_to_in1k").input_size == (3, 384, 384)


def test_timm_sees_the_module_unireplknet():
    assert "unireplknet" in timm.list_modules()
    assert timm.list_models(module="unireplknet") == sorted(unireplknet.list_models("unireplknet_*"))
    assert timm.models.get_pretrained_cfg("unireplknet_s.in22k").num_classes == IN22K_CLASSES


def test_timm_features_only():
    model = timm.create_model("unireplknet_a", features_only=True, out_indices=(0, 2))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [40, 160]
    assert model.feature_info.reduction() == [4, 16]


def test_feature_getter_scripts():
    gen = torch.Generator().manual_seed(4)
    model = timm.create_model("unireplknet_a", features_only=True, out_indices=(1, 3), layer_scale_init_value=1.0)
    model = randomize_reparam_terms(model, gen).eval()
    x = torch.randn(2, 3, 64, 48, generator=gen)
    with torch.no_grad():
        assert all(rel_error(s, e) < 1e-5 for s, e in zip(torch.jit.script(model)(x), model(x)))


def test_timm_data_config_resolves_from_pretrained_cfg():
    model = timm.create_model("unireplknet_b", device="meta")
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 384, 384) and cfg["interpolation"] == "bicubic"


def test_fx_feature_extraction_matches_eager():
    from timm.models._features_fx import create_feature_extractor

    gen = torch.Generator().manual_seed(5)
    model = unireplknet.UniRepLKNet(num_classes=5, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32),
                                    kernel_sizes=((3,), (7,), (13, 3), (17,)), layer_scale_init_value=1.0)
    model = randomize_reparam_terms(model, gen).eval()
    x = torch.randn(2, 3, 64, 48, generator=gen)
    extractor = create_feature_extractor(model, {"stages.1": "s1", "stages.3": "s3", "head": "logits"})
    code = extractor.code
    assert "scaled_linear" in code and "gelu_inplace_inference" in code  # the fast paths run as leaves
    with torch.no_grad():
        got = extractor(x)
        taps = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        assert rel_error(got["s1"], taps[0]) < 1e-6 and rel_error(got["s3"], taps[1]) < 1e-6
        assert rel_error(got["logits"], model(x)) < 1e-6
    fx_backbone = timm.create_model("unireplknet_a", features_only=True, feature_cls="fx").eval()
    assert [o.shape[1] for o in fx_backbone(torch.randn(1, 3, 64, 64))] == [40, 80, 160, 320]


@pytest.mark.parametrize("in_chans", [1, 2, 4, 7])
def test_stem_adaptation_follows_timm(in_chans):
    weight = torch.randn(16, 3, 3, 3, dtype=torch.float64)
    assert torch.equal(adapt_input_conv(weight, in_chans), timm.models.adapt_input_conv(in_chans, weight))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache in tmp_path: released files are found there, never on the network."""
    constants = pytest.importorskip("huggingface_hub.constants", reason="timm extra")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def released_a(hub):
    """UniRepLKNet-A with every weight random, released as the official in1k file."""
    model = randomize_reparam_terms(unireplknet.create_model("unireplknet_a"), torch.Generator().manual_seed(1))
    release(hub, "unireplknet_a", "in1k", model.state_dict())
    return model.eval()


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")  # meta device: shapes only, no copies
def test_timm_tag_selects_its_release(hub, monkeypatch):
    for seed, tag in enumerate(CHECKPOINT_FILES["unireplknet_s"]):
        release(hub, "unireplknet_s", tag, constant_release("unireplknet_s", tag, seed))
    requested = []
    real_download = timm.models._hub.hf_hub_download

    def recording_download(*args, **kwargs):
        requested.append(kwargs.get("filename", args[1] if len(args) > 1 else None))
        return real_download(*args, **kwargs)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", recording_download)
    model = timm.create_model("unireplknet_s.in22k", pretrained=True, device="meta")
    assert [f for f in requested if f.endswith(".pth")] == ["unireplknet_s_in22k_pretrain.pth"]
    assert model.pretrained_cfg["tag"] == "in22k" and model.pretrained_cfg["num_classes"] == IN22K_CLASSES
    assert model.head.out_features == IN22K_CLASSES


def test_timm_pretrained_weights_in_chans_and_deploy(released_a):
    x = torch.randn(2, 3, 64, 64)
    gray = torch.randn(2, 1, 64, 64)
    model = timm.create_model("unireplknet_a", pretrained=True).eval()
    one = timm.create_model("unireplknet_a", pretrained=True, in_chans=1, num_classes=5).eval()
    ours = unireplknet.create_model("unireplknet_a", pretrained=True, in_chans=1).eval()
    deploy = timm.create_model("unireplknet_a", pretrained=True, deploy=True).eval()
    with torch.no_grad():
        assert rel_error(model(x), released_a(x)) < 1e-6
        # a gray image through the summed stem == the same image repeated on 3 channels
        expected = released_a.forward_features(gray.expand(-1, 3, -1, -1))
        assert rel_error(one.forward_features(gray), expected) < 1e-5
        assert rel_error(ours.forward_features(gray), expected) < 1e-5 and one.head.out_features == 5
        assert deploy.deploy and rel_error(deploy(x), released_a(x)) < 1e-5


def test_timm_overlay_file_skips_the_hub(released_a, tmp_path, monkeypatch):
    other = randomize_reparam_terms(unireplknet.create_model("unireplknet_a"), torch.Generator().manual_seed(2))
    torch.save(other.state_dict(), tmp_path / "mine.pth")

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked although pretrained_cfg_overlay gives a file")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_hub)
    model = timm.create_model("unireplknet_a", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "mine.pth")))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_timm_features_only_pretrained_gives_the_stage_maps(released_a):
    backbone = timm.create_model("unireplknet_a", pretrained=True, features_only=True, out_indices=(1, 3)).eval()
    assert backbone.feature_info.channels() == [80, 320]
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected = released_a.forward_intermediates(x, indices=(1, 3), intermediates_only=True)
        assert all(rel_error(g, e) < 1e-6 for g, e in zip(backbone(x), expected))
