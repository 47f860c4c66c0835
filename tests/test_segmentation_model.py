"""UPerNet segmenter: shapes, exact re-parameterization, lr-decay groups, loss, and checkpoint loading
(MMSegmentation naming checked against a float64 functional UPerNet written from that naming)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay

from tests.conftest import rel_error
from unireplknet.analysis.complexity import randomize_reparam_terms
from unireplknet.errors import CheckpointError
from unireplknet.models.segmentation import (
    MODELS,
    SegmentationLoss,
    UPerNet,
    adaptive_avg_pool,
    load_backbone,
    load_segmenter,
)
from unireplknet.models.unireplknet import UniRepLKNet
from unireplknet.models.variants import VARIANTS

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (7,), (9, 3), (5,)))


def tiny(num_classes: int = 4, **kwargs) -> UPerNet:
    return UPerNet(num_classes=num_classes, channels=16, aux_channels=8, **TINY, **kwargs)


def test_forward_returns_logits_at_input_size_and_aux_in_training():
    torch.manual_seed(0)
    model = tiny(num_classes=5)
    x = torch.randn(2, 3, 45, 61)
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 5, 45, 61)
    model.eval()
    assert model(x).shape == (2, 5, 45, 61)
    assert UPerNet(num_classes=3, channels=16, aux_channels=0, **TINY).train()(x).shape == (2, 3, 45, 61)


def test_reparameterize_is_exact_in_float64():
    torch.manual_seed(1)
    model = randomize_reparam_terms(tiny(), torch.Generator().manual_seed(1)).double().eval()
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        after = model.reparameterize()(x)
    assert model.deploy
    assert rel_error(after, before) < 1e-10


def test_gradient_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(2)
    model = tiny().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        torch.manual_seed(3)  # same dropout masks
        model.zero_grad()
        logits, aux = model(x)
        (logits.square().mean() + aux.mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert rel_error(grads[1], grads[0]) < 1e-10


def test_layer_decay_groups_put_stem_first_and_heads_last():
    model = tiny()
    layers = group_parameters(model, model.group_matcher(), reverse=True)
    last = max(layers.values())
    assert layers["backbone.downsample_layers.0.0.weight"] == 0
    assert all(v == last for k, v in layers.items() if k.startswith(("decode_head.", "aux_head.")))
    assert layers["backbone.stages.0.0.pwconv1.1.weight"] < layers["backbone.stages.3.0.pwconv1.1.weight"] < last
    groups = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=0.5)

    def lr_scale(param):
        return next(g["lr_scale"] for g in groups if any(p is param for p in g["params"]))

    assert lr_scale(model.decode_head.classifier.weight) == lr_scale(model.aux_head.conv.conv.weight) == 1.0
    assert lr_scale(model.backbone.downsample_layers[0][0].weight) == 0.5 ** last
    assert any(".act.1." in n for n in model.no_weight_decay())


def test_segmentation_loss_matches_masked_cross_entropy_and_weights_aux():
    torch.manual_seed(4)
    logits, aux = torch.randn(2, 3, 5, 6, dtype=torch.float64), torch.randn(2, 3, 5, 6, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, :2] = 255
    keep = target != 255

    def ce(z):
        logp = z.log_softmax(1).permute(0, 2, 3, 1)[keep]  # (P, K)
        return -logp.gather(1, target[keep][:, None]).mean()

    loss_fn = SegmentationLoss()
    assert torch.allclose(loss_fn(logits, target), ce(logits))
    assert torch.allclose(loss_fn((logits, aux), target), ce(logits) + 0.4 * ce(aux))
    z = logits.clone().requires_grad_()
    empty = loss_fn(z, torch.full_like(target, 255))
    empty.backward()
    assert empty.item() == 0.0 and z.grad is not None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ohem_counts_exactly_the_hard_pixels_of_the_main_head(seed):
    """OHEM (MMSegmentation's OHEMPixelSampler semantics) against a float64 reference written per pixel: the
    main head's CE averages over pixels whose true-class probability is below max(thresh, the min_kept-th
    smallest probability); ignored pixels never count; the auxiliary head keeps every labelled pixel."""
    gen = torch.Generator().manual_seed(seed)
    n, k, h, w = 2, 4, int(torch.randint(5, 12, (1,), generator=gen)), int(torch.randint(5, 12, (1,), generator=gen))
    logits = torch.randn(n, k, h, w, dtype=torch.float64, generator=gen) * 3
    aux = torch.randn(n, k, h, w, dtype=torch.float64, generator=gen)
    target = torch.randint(0, k, (n, h, w), generator=gen)
    target[1, 0] = 255
    thresh, min_kept = 0.6, 7

    keep = target != 255
    p_true = logits.softmax(1).permute(0, 2, 3, 1)[keep].gather(1, target[keep][:, None]).squeeze(1)
    ranked = sorted(p_true.tolist())
    cutoff = max(thresh, ranked[min(min_kept * n, len(ranked) - 1)])
    hard = p_true < cutoff
    logp = logits.log_softmax(1).permute(0, 2, 3, 1)[keep].gather(1, target[keep][:, None]).squeeze(1)
    logp_aux = aux.log_softmax(1).permute(0, 2, 3, 1)[keep].gather(1, target[keep][:, None]).squeeze(1)
    expected = -logp[hard].mean() - 0.4 * logp_aux.mean()

    loss = SegmentationLoss(ohem_thresh=thresh, ohem_min_kept=min_kept)((logits, aux), target)
    assert hard.sum() >= min_kept * n  # the floor holds
    assert abs(loss.item() - expected.item()) <= 1e-12 * abs(expected.item())


def test_ohem_keeps_at_least_min_kept_pixels_when_every_pixel_is_easy():
    target = torch.randint(0, 3, (2, 6, 6), generator=torch.Generator().manual_seed(0))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).double() * 20  # every pixel right with p ~ 1
    logits = logits + torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = logits.clone().requires_grad_()
    SegmentationLoss(ohem_thresh=0.7, ohem_min_kept=5)(z, target).backward()
    counted = (z.grad.abs().sum(1) > 0).sum().item()
    assert counted == 2 * 5  # the 10 least confident pixels, not none and not all 72
    # Saturated: every true-class probability is exactly 1.0 in float32, so no pixel is below the cutoff.
    certain = (F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 200).requires_grad_()
    loss = SegmentationLoss(ohem_thresh=0.7, ohem_min_kept=5)(certain, target)
    loss.backward()
    assert loss.item() == 0.0 and certain.grad is not None and not certain.grad.isnan().any()


def test_builders_cover_every_size_a_to_xl():
    sizes = {k: v for k, v in MODELS.items() if k != "upernet_timm"}  # the peer-backbone builder is tested apart
    assert sorted(sizes) == sorted(f"upernet_{n}" for n in VARIANTS if n != "unireplknet_h")
    for name, build in sizes.items():
        with torch.device("meta"):
            model = build(num_classes=19)
        assert model.backbone.dims == VARIANTS[name.removeprefix("upernet_")].dims
        assert model.decode_head.classifier.out_channels == model.aux_head.classifier.out_channels == 19


# -- checkpoints ---------------------------------------------------------------------------------------------------

def _conv_module(prefix: str, cin: int, cout: int, k: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """An mmcv ConvModule's keys: bias-free conv, then BatchNorm."""
    return {f"{prefix}.conv.weight": torch.randn(cout, cin, k, k, generator=gen, dtype=torch.float64) * 0.2,
            f"{prefix}.bn.weight": torch.rand(cout, generator=gen, dtype=torch.float64) + 0.5,
            f"{prefix}.bn.bias": torch.randn(cout, generator=gen, dtype=torch.float64) * 0.1,
            f"{prefix}.bn.running_mean": torch.randn(cout, generator=gen, dtype=torch.float64) * 0.1,
            f"{prefix}.bn.running_var": torch.rand(cout, generator=gen, dtype=torch.float64) + 0.5,
            f"{prefix}.bn.num_batches_tracked": torch.tensor(7)}


def mmseg_state_dict(backbone: dict, dims, channels: int, aux_channels: int, k: int) -> dict[str, torch.Tensor]:
    """A UPerNet state dict named as MMSegmentation's UPerHead (PPM scales 1,2,3,6) and FCNHead (1 conv) name it."""
    gen = torch.Generator().manual_seed(5)
    sd = {f"backbone.{n}": v.double() for n, v in backbone.items()}
    for i in range(4):
        sd |= _conv_module(f"decode_head.psp_modules.{i}.1", dims[-1], channels, 1, gen)
    sd |= _conv_module("decode_head.bottleneck", dims[-1] + 4 * channels, channels, 3, gen)
    for i in range(3):
        sd |= _conv_module(f"decode_head.lateral_convs.{i}", dims[i], channels, 1, gen)
        sd |= _conv_module(f"decode_head.fpn_convs.{i}", channels, channels, 3, gen)
    sd |= _conv_module("decode_head.fpn_bottleneck", 4 * channels, channels, 3, gen)
    sd["decode_head.conv_seg.weight"] = torch.randn(k, channels, 1, 1, generator=gen, dtype=torch.float64)
    sd["decode_head.conv_seg.bias"] = torch.randn(k, generator=gen, dtype=torch.float64)
    sd |= _conv_module("auxiliary_head.convs.0", dims[2], aux_channels, 3, gen)
    sd["auxiliary_head.conv_seg.weight"] = torch.randn(k, aux_channels, 1, 1, generator=gen, dtype=torch.float64)
    sd["auxiliary_head.conv_seg.bias"] = torch.randn(k, generator=gen, dtype=torch.float64)
    return sd


def reference_uperhead(sd: dict, features: list[torch.Tensor]) -> torch.Tensor:
    """UPerHead in eval mode straight from MMSeg-named weights: the structure of dense_prediction.md."""
    def cm(prefix, x):
        w = sd[f"{prefix}.conv.weight"]
        y = F.conv2d(x, w, padding=w.shape[-1] // 2)
        y = F.batch_norm(y, sd[f"{prefix}.bn.running_mean"], sd[f"{prefix}.bn.running_var"],
                         sd[f"{prefix}.bn.weight"], sd[f"{prefix}.bn.bias"], False, 0.0, 1e-5)
        return y.relu()

    def up(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    top = features[3]
    psp = [top] + [up(cm(f"decode_head.psp_modules.{i}.1", F.adaptive_avg_pool2d(top, s)), top.shape[-2:])
                   for i, s in enumerate((1, 2, 3, 6))]
    laterals = [cm(f"decode_head.lateral_convs.{i}", features[i]) for i in range(3)]
    laterals.append(cm("decode_head.bottleneck", torch.cat(psp, 1)))
    for i in (3, 2, 1):
        laterals[i - 1] = laterals[i - 1] + up(laterals[i], laterals[i - 1].shape[-2:])
    outs = [cm(f"decode_head.fpn_convs.{i}", laterals[i]) for i in range(3)] + [laterals[3]]
    outs = [outs[0]] + [up(o, outs[0].shape[-2:]) for o in outs[1:]]
    fused = cm("decode_head.fpn_bottleneck", torch.cat(outs, 1))
    return F.conv2d(fused, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def test_mmseg_named_checkpoint_loads_through_the_key_map_and_computes_uperhead():
    torch.manual_seed(6)
    model = tiny(num_classes=6).double()
    backbone = randomize_reparam_terms(model.backbone).state_dict()
    sd = mmseg_state_dict(backbone, TINY["dims"], channels=16, aux_channels=8, k=6)
    load_segmenter(model, {"meta": {"CLASSES": ["a"] * 6}, "state_dict": sd})
    model.eval()
    assert torch.equal(model.aux_head.conv.conv.weight, sd["auxiliary_head.convs.0.conv.weight"])
    assert torch.equal(model.decode_head.ppm_convs[3].bn.running_var, sd["decode_head.psp_modules.3.1.bn.running_var"])
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        features = model.backbone(x)
        ours = model.decode_head(features)
        expected = reference_uperhead(sd, features)
        full = model(x)
    assert rel_error(ours, expected) < 1e-12
    assert rel_error(full, F.interpolate(expected, size=(64, 96), mode="bilinear", align_corners=False)) < 1e-12


def test_checkpoint_without_aux_head_loads_and_keeps_a_fresh_aux_head(tmp_path):
    model = tiny(num_classes=6)
    sd = mmseg_state_dict(model.backbone.state_dict(), TINY["dims"], 16, 8, 6)
    no_aux = {k: v.float() for k, v in sd.items() if not k.startswith("auxiliary_head.")}
    torch.save({"state_dict": no_aux}, tmp_path / "upernet.pth")
    load_segmenter(model, tmp_path / "upernet.pth")
    assert torch.equal(model.decode_head.classifier.bias, no_aux["decode_head.conv_seg.bias"])
    broken = dict(no_aux)
    broken.pop("decode_head.fpn_bottleneck.conv.weight")
    with pytest.raises(CheckpointError, match="fpn_fuse"):
        load_segmenter(tiny(num_classes=6), {"state_dict": broken})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_segmenter(tiny(num_classes=5), {"state_dict": no_aux})


def test_classification_checkpoint_loads_into_the_backbone(tmp_path):
    torch.manual_seed(7)
    classifier = UniRepLKNet(num_classes=10, **TINY)
    torch.save({"model": classifier.state_dict()}, tmp_path / "cls.pth")
    model = tiny()
    fresh_norm = model.backbone.norm2.weight.clone()
    load_backbone(model, tmp_path / "cls.pth")
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in classifier.state_dict().items() if not k.startswith(("norm", "head")))
    assert torch.equal(model.backbone.norm2.weight, fresh_norm)
    with pytest.raises(CheckpointError, match="classification checkpoint"):
        load_segmenter(model, tmp_path / "cls.pth")
    bigger = UniRepLKNet(num_classes=10, depths=(1, 1, 2, 1), dims=(8, 16, 32, 64),
                         kernel_sizes=TINY["kernel_sizes"])
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_backbone(model, bigger.state_dict())


def test_dense_checkpoint_backbone_part_loads_with_its_stage_norms():
    source = tiny(num_classes=6)
    with torch.no_grad():
        source.backbone.norm1.weight.fill_(3.0)
    dense = {f"backbone.{k}": v for k, v in source.backbone.state_dict().items()} | {
        "decode_head.conv_seg.weight": torch.zeros(150, 16, 1, 1)}
    model = tiny(num_classes=9)
    load_backbone(model, {"state_dict": dense})
    assert torch.equal(model.backbone.norm1.weight, source.backbone.norm1.weight)
    with pytest.raises(CheckpointError, match="backbone only"):
        load_segmenter(model, {k: v for k, v in dense.items() if k.startswith("backbone.")})


def test_builder_loads_a_backbone_file(tmp_path):
    variant = VARIANTS["unireplknet_a"]
    classifier = UniRepLKNet(num_classes=3, depths=variant.depths, dims=variant.dims)
    torch.save(classifier.state_dict(), tmp_path / "a.pth")
    model = MODELS["upernet_unireplknet_a"](num_classes=7, pretrained_backbone=tmp_path / "a.pth", deploy=True)
    assert model.deploy
    assert model.decode_head.classifier.out_channels == 7


@pytest.mark.parametrize("hw", [(16, 16), (7, 13), (2, 2)])
def test_export_form_of_adaptive_pooling_matches_torch(monkeypatch, hw):
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    expected = [F.adaptive_avg_pool2d(x, s) for s in (1, 2, 3, 6)]
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    for s, ref in zip((1, 2, 3, 6), expected):
        assert torch.allclose(adaptive_avg_pool(x, s), ref, rtol=0, atol=1e-12)


def test_onnx_export_with_dynamic_batch_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the train extra")
    from unireplknet.engine.export import export_onnx, verify_onnx

    torch.manual_seed(8)
    model = tiny(num_classes=5).eval().reparameterize()
    export_onnx(model, tmp_path / "seg.onnx", (3, 64, 96))  # 2×3 last map: pools 3 and 6 do not divide it
    assert verify_onnx(model, tmp_path / "seg.onnx", torch.randn(3, 3, 64, 96)) < 1e-4
