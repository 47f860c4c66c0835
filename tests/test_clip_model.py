"""CLIP with a UniRepLKNet image tower: the OpenCLIP configs registered by `import unireplknet`, `pretrained=` a
local file, CLIPModel's custom trunk and forward modes, the exact deploy form, the checkpoint rebuild by meta."""

from __future__ import annotations

import copy

import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is in the 'clip' extra")

import unireplknet  # noqa: E402  (registers the OpenCLIP configs)
from unireplknet.models import VARIANTS, build_model_from_checkpoint, reparameterize  # noqa: E402
from unireplknet.models.clip import CLIPModel, build_clip, open_clip_config  # noqa: E402

SIZES = ["A", "F", "P", "N", "T", "S", "B", "L", "XL"]
SMALL_TEXT = {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TOWER = {"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 32], "kernel_sizes": [[3], [7], [5, 5], [3]],
         "layer_scale_init_value": 1.0}  # layer scale 1: the re-parameterized branches count in the output


def _small_cfg(tower: str = "unireplknet_a") -> dict:
    return {"embed_dim": 16, "vision_cfg": {"timm_model_name": tower, "timm_model_pretrained": False,
                                            "timm_pool": "avg", "timm_proj": "linear", "image_size": 32},
            "text_cfg": SMALL_TEXT}


@pytest.mark.parametrize("size", SIZES)
def test_every_size_builds_through_open_clip(size: str) -> None:
    """`open_clip.create_model('UniRepLKNet-X')` gives CLIP with the variant's trunk (built on the meta device)."""
    assert f"UniRepLKNet-{size}" in open_clip.list_models()
    cfg = open_clip_config(f"UniRepLKNet-{size}")
    with torch.device("meta"):
        model = open_clip.create_model(f"UniRepLKNet-{size}", device="meta")
    trunk = model.visual.trunk
    variant = VARIANTS[f"unireplknet_{size.lower()}"]
    assert isinstance(trunk, unireplknet.UniRepLKNet)
    assert trunk.depths == tuple(variant.depths) and trunk.dims == tuple(variant.dims)
    assert model.visual.head.proj.weight.shape == (cfg["embed_dim"], variant.dims[-1])
    assert model.text_projection.shape == (cfg["text_cfg"]["width"], cfg["embed_dim"])


def test_create_model_and_transforms_and_pretrained_file(tmp_path) -> None:
    model, _, preprocess = open_clip.create_model_and_transforms("UniRepLKNet-A")
    assert preprocess.transforms[0].size == 224
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    tokens = open_clip.get_tokenizer("UniRepLKNet-A")(["a red circle", "two blue squares"])
    with torch.no_grad():
        ref = model(images, tokens)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    again = open_clip.create_model("UniRepLKNet-A", pretrained=str(path)).eval()
    with torch.no_grad():
        got = again(images, tokens)
    for a, b in zip(ref[:2], got[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clip_model_custom_trunk_and_forward_modes() -> None:
    torch.manual_seed(0)
    model = build_clip(_small_cfg(), TOWER).eval()
    assert model.visual.trunk.kernel_sizes == ((3,), (7,), (5, 5), (3,))
    assert model.visual.head.proj.weight.shape == (16, 32)
    images, tokens = torch.randn(3, 3, 32, 32), torch.randint(1, 49000, (3, 12))
    with torch.no_grad():
        img, txt, scale = model(images, tokens)
        assert img.shape == txt.shape == (3, 16)
        torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
        torch.testing.assert_close(model(images), img)  # one modality at a time: what reparam/export/bench run
        torch.testing.assert_close(model(None, tokens), txt)
        model.logit_scale.fill_(10.0)
        assert float(model(images, tokens)[2]) == 100.0  # OpenCLIP's clamp of the temperature
    other = build_clip(_small_cfg("convnext_atto"), {"dims": [8, 16, 24, 32], "ls_init_value": 1.0})
    assert other.visual.trunk.num_features == 32 and other.visual.head.proj.weight.shape == (16, 32)
    assert torch.equal(other.visual.trunk.stages[0].blocks[0].gamma.detach(), torch.ones(8))


def test_deploy_form_is_exact_in_float64() -> None:
    """The re-parameterized image tower computes the training form's embeddings (float64: to rounding)."""
    torch.manual_seed(1)
    model = build_clip(_small_cfg(), TOWER).double()
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    deploy = reparameterize(copy.deepcopy(model)).eval()
    assert not model.deploy and deploy.deploy
    assert not any("dil_conv" in k for k in deploy.state_dict())
    x = torch.randn(4, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        ref, got, other = model(x), deploy(x), model(torch.randn_like(x))
    assert float((ref - got).abs().max()) < 1e-10
    assert float((ref - other).abs().max()) > 1e-3  # (the check can fail)


def test_checkpoint_rebuilds_by_meta_builder() -> None:
    torch.manual_seed(2)
    model = build_clip(_small_cfg(), TOWER).eval()
    meta = {"builder": "clip", "clip_cfg": _small_cfg(), "tower_kwargs": TOWER, "task": "clip"}
    x = torch.randn(2, 3, 32, 32)
    for deploy in (False, True):
        m = reparameterize(copy.deepcopy(model)) if deploy else model
        rebuilt, got_meta = build_model_from_checkpoint({"model": m.state_dict(), "meta": {**meta, "deploy": deploy}})
        assert isinstance(rebuilt, CLIPModel) and rebuilt.deploy is deploy and got_meta["builder"] == "clip"
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=1e-5, atol=1e-6)
    from unireplknet.errors import CheckpointError

    with pytest.raises(CheckpointError, match="unknown builder 'nope'"):
        build_model_from_checkpoint({"model": {}, "meta": {**meta, "builder": "nope"}})
    with pytest.raises(CheckpointError, match="does not describe a 'clip' model"):
        build_model_from_checkpoint({"model": {}, "meta": {**meta, "clip_cfg": {"embed_dim": 4}}})
    bad_tower = {**_small_cfg(), "vision_cfg": {**_small_cfg()["vision_cfg"], "timm_model_name": "no_such_net"}}
    with pytest.raises(CheckpointError, match="no_such_net"):
        build_model_from_checkpoint({"model": {}, "meta": {**meta, "clip_cfg": bad_tower}})
