"""(Cascade) Mask R-CNN: Table 6 sizes, the cascade's numerics against float64 references, loading, passthroughs."""

from __future__ import annotations

import math

import pytest
import torch

from unireplknet.analysis.complexity import randomize_reparam_terms
from unireplknet.errors import CheckpointError
from unireplknet.models.detection import MODELS, CascadeMaskRCNN, detection_complexity, load_backbone
from unireplknet.models.detection_heads import CascadeRoIHeads, LevelRoIAlign, mask_targets
from unireplknet.models.features import UniRepLKNetFeatures
from unireplknet.models.registry import create_model
from unireplknet.models.unireplknet import UniRepLKNet

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (13,), (13, 3), (13,)))
SMALL_HEAD = dict(fpn_channels=16, fc_channels=32, num_convs=1, mask_channels=16, mask_convs=1, min_size=96,
                  max_size=128, rpn_pre_nms_train=200, rpn_post_nms_train=100, rpn_pre_nms_test=100,
                  rpn_post_nms_test=50, rpn_samples=64, roi_samples=32)


def tiny_detector(num_classes: int = 3, num_stages: int = 3, **kwargs) -> CascadeMaskRCNN:
    return CascadeMaskRCNN(UniRepLKNetFeatures(**TINY), num_classes, num_stages, **{**SMALL_HEAD, **kwargs})


def box_target(h: int, w: int, boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    b = torch.tensor(boxes, dtype=torch.float32)
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, b.long().tolist()):
        m[y1:y2, x1:x2] = 1
    return dict(boxes=b, labels=torch.tensor(labels), masks=masks)


@pytest.mark.parametrize("size,params_m,gflops", [("t", 89, 749), ("s", 113, 835)])
def test_table6_params_and_macs(size, params_m, gflops):
    (row,) = detection_complexity([f"cascade_mask_rcnn_unireplknet_{size}"])
    assert abs(row.params / 1e6 - params_m) < 1.0, row
    assert abs(row.gmacs / gflops - 1) < 0.05, row


def test_every_size_is_registered_for_both_families():
    sizes = ("a", "f", "p", "n", "t", "s", "b", "l", "xl")
    assert set(MODELS) == {f"{f}_unireplknet_{s}" for f in ("cascade_mask_rcnn", "mask_rcnn") for s in sizes} | {
        "cascade_mask_rcnn_timm", "mask_rcnn_timm"}
    for size in sizes:
        for family, stages in (("cascade_mask_rcnn", 3), ("mask_rcnn", 1))[: 2 if size == "a" else 1]:
            with torch.device("meta"):
                model = MODELS[f"{family}_unireplknet_{size}"](num_classes=7)
            assert model.roi_heads.num_stages == stages and len(model.roi_heads.mask_heads) == stages
            assert model.roi_heads.box_heads[0].cls_score.out_features == 8
            assert model.roi_heads.box_heads[0].bbox_pred.out_features == 28


@pytest.mark.parametrize("num_stages", [3, 1])
def test_train_step_and_eval_outputs(num_stages):
    torch.manual_seed(0)
    model = tiny_detector(num_stages=num_stages, min_size=64)
    images = [torch.rand(3, 64, 96), torch.rand(3, 56, 64)]
    targets = [box_target(64, 96, [[10, 12, 60, 60], [50, 20, 90, 50]], [1, 3]),
               box_target(56, 64, [[5, 5, 40, 50]], [2])]
    losses = model(images, targets)
    prefixes = [f"s{t}." for t in range(num_stages)] if num_stages > 1 else [""]
    expected = {"loss_objectness", "loss_rpn_box_reg"} | {p + k for p in prefixes
                                                          for k in ("loss_cls", "loss_box", "loss_mask")}
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name in ("backbone.stages.1.0.pwconv1.1.weight", "neck.layer_blocks.0.0.weight",
                 f"roi_heads.box_heads.{num_stages - 1}.cls_score.weight",
                 f"roi_heads.mask_heads.{num_stages - 1}.1.mask_fcn_logits.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        outs = model(images)
    for out, img in zip(outs, images):
        n = len(out["boxes"])
        assert 0 < n <= 100
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3
        assert out["masks"].dtype == torch.bool and out["masks"].shape == (n, *img.shape[-2:])
        assert (out["scores"] >= 0.05).all() and (out["scores"][:-1] >= out["scores"][1:]).all()
        assert (out["boxes"][:, 2] <= img.shape[-1]).all() and (out["boxes"][:, 3] <= img.shape[-2]).all()


def _decode(deltas: torch.Tensor, boxes: torch.Tensor, stds) -> torch.Tensor:
    """Float64 reference of the delta -> box decoding (means 0, per-coordinate stds, |dw|,|dh| clipped)."""
    d = deltas * torch.tensor(stds, dtype=deltas.dtype)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    clip = math.log(1000 / 16)
    pw, ph = w * d[:, 2].clamp(max=clip).exp(), h * d[:, 3].clamp(max=clip).exp()
    px, py = cx + d[:, 0] * w, cy + d[:, 1] * h
    return torch.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1)


def test_cascade_inference_matches_float64_reference():
    """Stage t+1 pools stage t's boxes (decoded for the best object class); scores = softmax of the
    stage-averaged logits; boxes from the last stage. No NMS (IoU 1) and no score floor, so every
    (RoI, class) pair must come out."""
    torch.manual_seed(1)
    k, h, w = 3, 64, 80
    heads = CascadeRoIHeads(k, 3, in_channels=8, num_convs=1, fc_channels=16, with_mask=False, score_thresh=-1,
                            nms_thresh=1.0, detections_per_img=10_000).double().eval()
    for p in heads.parameters():
        p.data.normal_(0, 0.3)
    for m in heads.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    features = [torch.randn(1, 8, h // s, w // s, dtype=torch.float64) for s in (4, 8, 16, 32)]
    xy = torch.rand(6, 2, dtype=torch.float64) * 40
    props = torch.cat([xy, xy + 8 + torch.rand(6, 2, dtype=torch.float64) * 30], 1)
    (out,) = heads.predict(features, [props], [(h, w)])

    boxes, logit_sum = props, 0
    for t, stds in enumerate(((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))):
        logits, deltas = heads.box_heads[t](heads.box_pool(features, [boxes]))
        logit_sum = logit_sum + logits
        deltas = deltas.view(len(boxes), k, 4)
        if t < 2:
            best = logits[:, 1:].argmax(1)
            boxes = _decode(deltas[torch.arange(len(boxes)), best], boxes, stds)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    scores = torch.softmax(logit_sum / 3, 1)[:, 1:]
    ref = {}
    for c in range(k):
        b = _decode(deltas[:, c], boxes, stds)
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        for i in range(len(boxes)):
            ref[(round(scores[i, c].item(), 9), c + 1)] = b[i]
    got = {(round(s.item(), 9), int(lab)): b for s, lab, b in zip(out["scores"], out["labels"], out["boxes"])}
    assert got.keys() == ref.keys()
    err = max(float((got[key] - ref[key]).abs().max().detach()) for key in ref)
    assert err < 1e-9, err


def test_box_loss_is_weighted_giou_over_sampled_rois():
    """loss_box = 10 * sum over positives of (1 - GIoU(decoded, GT)) / number of sampled RoIs (float64)."""
    torch.manual_seed(2)
    heads = CascadeRoIHeads(2, 1, in_channels=8, num_convs=0, fc_channels=16, with_mask=False).double()
    for p in heads.parameters():
        p.data.normal_(0, 0.2)
    features = [torch.randn(1, 8, 64 // s, 64 // s, dtype=torch.float64) for s in (4, 8, 16, 32)]
    gt = torch.tensor([[10.0, 10, 40, 30]], dtype=torch.float64)
    rois = torch.tensor([[12.0, 8, 42, 33], [9, 11, 38, 29], [50, 50, 60, 60]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0])
    target = dict(boxes=gt, labels=torch.tensor([2]))
    losses, logits, deltas = heads._stage_losses(0, features, [rois], [labels * 2], [torch.zeros(3, dtype=torch.long)],
                                                 [target])
    pred = _decode(deltas.view(3, 2, 4)[:2, 1], rois[:2], (0.1, 0.1, 0.2, 0.2))

    def giou(a, b):
        inter = (torch.min(a[2], b[2]) - torch.max(a[0], b[0])).clamp(min=0) * \
                (torch.min(a[3], b[3]) - torch.max(a[1], b[1])).clamp(min=0)
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        hull = (torch.max(a[2], b[2]) - torch.min(a[0], b[0])) * (torch.max(a[3], b[3]) - torch.min(a[1], b[1]))
        return inter / union - (hull - union) / hull

    expected = 10 * sum(1 - giou(p, gt[0]) for p in pred) / 3
    assert torch.allclose(losses["loss_box"], expected, rtol=1e-10)
    assert torch.allclose(losses["loss_cls"], torch.nn.functional.cross_entropy(logits, labels * 2), rtol=1e-12)


def test_mask_targets_crop_the_matched_gt():
    gt = torch.zeros(2, 40, 40)
    gt[0, 10:30, 10:30] = 1  # a 20x20 square
    gt[1, :, :20] = 1  # left half
    boxes = torch.tensor([[10.0, 10, 30, 30], [10, 10, 50, 30], [0, 0, 40, 40]])
    t = mask_targets(gt, boxes, torch.tensor([0, 0, 1]), 28)
    assert t[0].all()  # RoI = the square
    assert t[1, :, :13].all() and not t[1, :, 15:].any()  # RoI twice as wide: left half is the object
    assert t[2, :, :13].all() and not t[2, :, 15:].any()  # the second GT by its matched index


def test_level_roi_align_picks_fpn_level_by_box_scale():
    pool = LevelRoIAlign(2, strides=(4, 8, 16, 32))
    features = [torch.full((1, 1, 512 // s, 512 // s), float(i)) for i, s in enumerate((4, 8, 16, 32))]
    sides = [20, 60, 111, 113, 230, 460, 500]  # floor(log2(side / 56)) clamped to 0..3
    boxes = torch.tensor([[0.0, 0, s, s] for s in sides])
    levels = pool(features, [boxes]).mean(dim=(1, 2, 3))
    assert levels.tolist() == [0, 0, 0, 1, 2, 3, 3]
    coarser = LevelRoIAlign(2, strides=(4, 8, 16, 32), finest_scale=14.0)  # floor(log2(side / 14))
    assert coarser(features, [boxes]).mean(dim=(1, 2, 3)).tolist() == [0, 2, 2, 3, 3, 3, 3]


def test_roi_finest_scale_reaches_both_roi_extractors_of_the_detector():
    model = tiny_detector(roi_finest_scale=14.0)
    assert model.roi_heads.box_pool.finest_scale == model.roi_heads.mask_pool.finest_scale == 14.0
    assert tiny_detector().roi_heads.box_pool.finest_scale == 56.0


def test_anchors_use_the_true_stride_of_the_pooled_level():
    model = tiny_detector()
    from torchvision.models.detection.image_list import ImageList

    feats = [torch.zeros(1, 1, 96 // s if s < 64 else 2, 96 // s if s < 64 else 2) for s in (4, 8, 16, 32, 64)]
    anchors = model.rpn.anchor_generator(ImageList(torch.zeros(1, 3, 96, 96), [(96, 96)]), feats)[0]
    last = anchors[-2 * 2 * 3:]  # P6: 2x2 positions x 3 ratios, stride 64, size 512
    centres = ((last[:, 0] + last[:, 2]) / 2).unique()
    assert centres.tolist() == [0.0, 64.0]
    assert len(anchors) == 3 * sum(f.shape[-1] * f.shape[-2] for f in feats)


def test_reparameterize_is_exact_on_the_pyramid_and_detections():
    torch.manual_seed(3)
    model = tiny_detector(num_classes=2).double().eval()
    randomize_reparam_terms(model.backbone, torch.Generator().manual_seed(0))
    images = [torch.rand(3, 96, 96, dtype=torch.float64)]
    with torch.no_grad():
        before = model._pyramid(model.transform(images)[0].tensors)[0]
        det_before = model(images)[0]
        model.reparameterize()
        after = model._pyramid(model.transform(images)[0].tensors)[0]
        det_after = model(images)[0]
    assert model.backbone.deploy
    for a, b in zip(after.values(), before.values()):
        assert float((a - b).norm() / b.norm()) < 1e-10
    assert torch.allclose(det_after["boxes"], det_before["boxes"], atol=1e-8)
    assert torch.equal(det_after["labels"], det_before["labels"])


def test_grad_checkpointing_and_layer_decay_groups():
    timm_optim = pytest.importorskip("timm.optim")
    model = tiny_detector()
    model.set_grad_checkpointing(True)
    assert all(b.with_cp for stage in model.backbone.stages for b in stage)
    groups = timm_optim.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.8)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["roi_heads.box_heads.0.cls_score.weight"])] == 1.0
    assert scale[id(named["neck.layer_blocks.0.0.weight"])] == 1.0
    stem = scale[id(named["backbone.downsample_layers.0.0.weight"])]
    mid = scale[id(named["backbone.stages.2.0.pwconv1.1.weight"])]
    assert stem < mid < 1.0


def test_timm_convnext_backbone_trains_rebuilds_from_meta_and_has_nothing_to_fold():
    pytest.importorskip("timm")
    from unireplknet.models import build_model_from_checkpoint, reparameterize

    torch.manual_seed(0)
    kwargs = dict(SMALL_HEAD, num_classes=3, timm_backbone="convnext_atto")
    model = create_model("cascade_mask_rcnn_timm", **kwargs)
    assert [b[0].in_channels for b in model.neck.inner_blocks] == [40, 80, 160, 320]  # from timm's feature_info
    images = [torch.rand(3, 96, 96), torch.rand(3, 64, 96)]
    targets = [box_target(96, 96, [[10, 12, 60, 60]], [1]), box_target(64, 96, [[5, 5, 40, 50]], [2])]
    sum(model(images, targets).values()).backward()
    assert model.backbone.body.stages_0.blocks[0].conv_dw.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        before = model(images)
        checkpoint = {"model": model.state_dict(), "meta": {"model": "cascade_mask_rcnn_timm", "model_kwargs": kwargs,
                                                            "deploy": True}}
        rebuilt, _ = build_model_from_checkpoint(checkpoint)
        after = reparameterize(rebuilt).eval()(images)
    for a, b in zip(after, before):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
    with pytest.raises(ValueError, match="timm backbone"):
        create_model("mask_rcnn_timm", timm_backbone="convnext_atto", kernel_sizes=3)
    with pytest.raises(ValueError, match="timm backbone"):
        create_model("mask_rcnn_timm")
    with pytest.raises(ValueError, match="strides"):
        create_model("mask_rcnn_timm", timm_backbone="resnet18")


def _backbone_equal(model: CascadeMaskRCNN, state: dict, prefix: str = "") -> bool:
    own = model.backbone.state_dict()
    return all(torch.equal(own[k[len(prefix):]], v) for k, v in state.items() if k.startswith(prefix))


def test_load_backbone_from_dense_and_classification_checkpoints(tmp_path):
    torch.manual_seed(4)
    cls = UniRepLKNet(num_classes=5, **TINY)
    model = tiny_detector()
    norm_before = model.backbone.norm0.weight.clone()
    torch.save({"model": cls.state_dict()}, tmp_path / "cls.pth")
    load_backbone(model, tmp_path / "cls.pth")
    assert _backbone_equal(model, {k: v for k, v in cls.state_dict().items() if not k.startswith(("head", "norm"))})
    assert torch.equal(model.backbone.norm0.weight, norm_before)  # stage norms stay fresh

    donor = tiny_detector()
    for p in donor.parameters():
        p.data.normal_()
    dense = {"state_dict": {**{f"backbone.{k}": v for k, v in donor.backbone.state_dict().items()},
                            "neck.fpn_convs.0.conv.weight": torch.zeros(1), "roi_head.x": torch.zeros(1)},
             "meta": {"mmdet_version": "2.28"}}
    torch.save(dense, tmp_path / "det.pth")
    load_backbone(model, tmp_path / "det.pth")
    assert _backbone_equal(model, dense["state_dict"], "backbone.")
    assert torch.equal(model.backbone.norm3.weight, donor.backbone.norm3.weight)


def test_load_backbone_errors(tmp_path):
    model = tiny_detector()
    other = UniRepLKNet(num_classes=5, depths=(1, 1, 2, 1), dims=(16, 32, 48, 64),
                        kernel_sizes=TINY["kernel_sizes"])
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_backbone(model, other.state_dict())
    with pytest.raises(CheckpointError, match="no UniRepLKNet backbone"):
        load_backbone(model, {"state_dict": {"neck.a": torch.zeros(1)}})
    deploy = UniRepLKNet(num_classes=5, deploy=True, **TINY)
    with pytest.raises(CheckpointError, match="deploy"):
        load_backbone(model, deploy.state_dict())
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(model, tmp_path / "absent.pth")


def test_builder_loads_a_classification_backbone_then_converts_to_deploy(tmp_path):
    torch.manual_seed(5)
    cls = randomize_reparam_terms(create_model("unireplknet_a", num_classes=3)).eval()
    torch.save(cls.state_dict(), tmp_path / "a.pth")
    det = MODELS["mask_rcnn_unireplknet_a"](num_classes=2, pretrained_backbone=tmp_path / "a.pth", deploy=True,
                                            **SMALL_HEAD).eval()
    assert det.backbone.deploy and det.roi_heads.num_stages == 1
    ref = UniRepLKNetFeatures(depths=cls.depths, dims=cls.dims)
    load_backbone(ref, cls.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(det.backbone(x), ref.eval()(x)):
            assert float((a - b).norm() / b.norm()) < 1e-5


def test_global_context_adds_the_projected_image_mean_of_the_top_map_to_every_level():
    torch.manual_seed(0)
    plain, context = tiny_detector(), tiny_detector(global_context=True)
    assert plain.global_context is None
    context.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(2, 3, 64, 96)
    plain.eval(), context.eval()
    with torch.no_grad():
        base, added = plain._pyramid(x)[0], context._pyramid(x)[0]
        top = context.backbone(x)[-1].double().mean((2, 3))
        expected = (top @ context.global_context.weight.double().T + context.global_context.bias.double())
    assert list(base) == list(added)
    for key in base:
        diff = (added[key] - base[key]).double()
        assert torch.allclose(diff, expected[:, :, None, None].expand_as(diff), atol=1e-5), key
