"""Checkpoint formats, clear mismatch errors, and pretrained weights through a fake (offline) hub."""


import pytest
import torch

import unireplknet
from tests.conftest import rel_error
from tests.fake_hub import release
from unireplknet.errors import CheckpointError, PretrainedUnavailableError
from unireplknet.models.checkpoint import build_model_from_checkpoint

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (13,), (13, 3), (13,)))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "ddp"])
def test_pth_layouts_load(tmp_path, wrap):
    src = unireplknet.UniRepLKNet(num_classes=4, **TINY)
    sd = src.state_dict()
    obj = {"raw": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
           "ddp": {"model": {f"module.{k}": v for k, v in sd.items()}}}[wrap]
    torch.save(obj, tmp_path / "ckpt.pth")
    dst = unireplknet.UniRepLKNet(num_classes=4, **TINY)
    unireplknet.load_checkpoint(dst, tmp_path / "ckpt.pth")
    assert _same_weights(src, dst)


def test_safetensors_loads(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch", reason="timm extra")
    src = unireplknet.UniRepLKNet(num_classes=4, **TINY)
    safetensors.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    dst = unireplknet.UniRepLKNet(num_classes=4, **TINY)
    unireplknet.load_checkpoint(dst, tmp_path / "w.safetensors")
    assert _same_weights(src, dst)


def test_mismatches_are_named(tmp_path):
    train = unireplknet.UniRepLKNet(num_classes=4, **TINY)
    deploy_sd = unireplknet.UniRepLKNet(num_classes=4, **TINY).reparameterize().state_dict()
    with pytest.raises(CheckpointError, match="unexpected keys: .*lk_origin.bias.*build the model with deploy=True"):
        unireplknet.load_checkpoint(train, deploy_sd)
    deploy = unireplknet.UniRepLKNet(num_classes=4, deploy=True, **TINY)
    with pytest.raises(CheckpointError, match="missing keys|unexpected keys"):
        unireplknet.load_checkpoint(deploy, train.state_dict())
    other = unireplknet.UniRepLKNet(num_classes=7, **TINY)
    with pytest.raises(CheckpointError, match=r"head.weight \(7, 32\) vs model \(4, 32\).*num_classes"):
        unireplknet.load_checkpoint(train, other.state_dict())
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        unireplknet.load_checkpoint(train, tmp_path / "nope.pth")
    for i, junk in enumerate([b"not a checkpoint", b"just text\n", b"PK\x03\x04truncated zip"]):
        (tmp_path / f"junk{i}.pth").write_bytes(junk)
        with pytest.raises(CheckpointError, match="cannot read .* as a PyTorch checkpoint"):
            unireplknet.load_checkpoint(train, tmp_path / f"junk{i}.pth")


def test_build_model_from_run_checkpoint(tmp_path):
    src = unireplknet.create_model("unireplknet_a", num_classes=3)
    meta = {"model": "unireplknet_a", "model_kwargs": {"num_classes": 3}, "deploy": False,
            "task": "classification", "class_names": ["a", "b", "c"], "input_size": [3, 64, 64],
            "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.save({"model": src.state_dict(), "meta": meta}, tmp_path / "run.pt")
    model, got_meta = build_model_from_checkpoint(tmp_path / "run.pt")
    assert got_meta["class_names"] == ["a", "b", "c"] and _same_weights(src, model)
    torch.save({"model": src.state_dict()}, tmp_path / "official.pt")
    with pytest.raises(CheckpointError, match="has no 'meta'"):
        build_model_from_checkpoint(tmp_path / "official.pt")


@pytest.fixture
def offline(monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants", reason="timm extra")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def test_pretrained_from_fake_hub(tmp_path, offline):
    released = unireplknet.create_model("unireplknet_a")
    release(tmp_path, "unireplknet_a", "in1k", released.state_dict())
    model = unireplknet.create_model("unireplknet_a", pretrained=True, cache_dir=tmp_path)
    assert _same_weights(released, model)
    assert model.pretrained_cfg["tag"] == "in1k"
    # a new head for fine-tuning: everything else loaded
    tuned = unireplknet.create_model("unireplknet_a", pretrained="in1k", num_classes=5, cache_dir=tmp_path)
    assert tuned.head.out_features == 5
    assert torch.equal(tuned.stages[2][0].dwconv.lk_origin.weight, released.stages[2][0].dwconv.lk_origin.weight)
    # deploy form straight from released (training-form) weights
    deploy = unireplknet.create_model("unireplknet_a", pretrained=True, deploy=True, cache_dir=tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(deploy(x), released.eval()(x), rtol=1e-4, atol=1e-5)
    feats = unireplknet.create_model("unireplknet_a", pretrained=True, features_only=True, cache_dir=tmp_path)
    assert torch.equal(feats.downsample_layers[0][0].weight, released.downsample_layers[0][0].weight)


def test_pretrained_in22k_keeps_its_head(tmp_path, offline):
    released = unireplknet.create_model("unireplknet_s", num_classes=21841)
    release(tmp_path, "unireplknet_s", "in22k", released.state_dict())
    model = unireplknet.create_model("unireplknet_s", pretrained="in22k", cache_dir=tmp_path)
    assert model.head.out_features == 21841 and _same_weights(model, released)


def test_pretrained_errors_are_one_line(tmp_path, offline):
    with pytest.raises(PretrainedUnavailableError, match="could not get unireplknet_t_in1k_224_acc83.21.pth") as err:
        unireplknet.create_model("unireplknet_t", pretrained=True, cache_dir=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(PretrainedUnavailableError, match="no 'in22k' release"):
        unireplknet.create_model("unireplknet_a", pretrained="in22k")
    with pytest.raises(PretrainedUnavailableError, match="no released weights for unireplknet_h"):
        unireplknet.create_model("unireplknet_h", pretrained=True)
    with pytest.raises(PretrainedUnavailableError, match="neither a tag"):
        unireplknet.create_model("unireplknet_a", pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_local_file(tmp_path):
    released = unireplknet.create_model("unireplknet_a")
    torch.save(released.state_dict(), tmp_path / "mine.pth")
    model = unireplknet.create_model("unireplknet_a", pretrained=str(tmp_path / "mine.pth"))
    assert _same_weights(released, model)


def test_pretrained_stem_adapts_to_in_chans(tmp_path):
    released = unireplknet.create_model("unireplknet_a").eval()
    torch.save(released.state_dict(), tmp_path / "mine.pth")
    gray = torch.randn(2, 1, 64, 64)
    one = unireplknet.create_model("unireplknet_a", pretrained=str(tmp_path / "mine.pth"), in_chans=1).eval()
    with torch.no_grad():  # the summed stem sees a gray image as the 3-channel model sees it repeated
        assert rel_error(one.forward_features(gray), released.forward_features(gray.expand(-1, 3, -1, -1))) < 1e-5
    four = unireplknet.create_model("unireplknet_a", pretrained=str(tmp_path / "mine.pth"), in_chans=4)
    stem = released.downsample_layers[0][0].weight
    assert torch.allclose(four.downsample_layers[0][0].weight, torch.cat([stem, stem[:, :1]], 1) * 0.75)
