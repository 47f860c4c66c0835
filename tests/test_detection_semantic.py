"""The detectors' image-context options: HTC's semantic branch and the image-label loss (training only), and the
image-context vector of the box classifiers (`roi_context`)."""

from __future__ import annotations

import pytest
import torch

from tests.test_detection_model import SMALL_HEAD, TINY, box_target
from unireplknet.models.detection import CascadeMaskRCNN
from unireplknet.models.detection_heads import BoxHead, per_roi
from unireplknet.models.detection_semantic import IGNORE, SemanticAuxHead, semantic_targets
from unireplknet.models.features import UniRepLKNetFeatures


def test_semantic_targets_label_instances_pad_with_ignore_and_sample_cell_centres():
    m0 = torch.zeros(2, 16, 24, dtype=torch.uint8)
    m0[0, 0:8, 0:16] = 1
    m0[1, 4:12, 8:24] = 1  # drawn over instance 0 where they overlap
    m1 = torch.zeros(1, 8, 8, dtype=torch.uint8)
    m1[0, 4:8, 0:4] = 1
    out = semantic_targets([m0, m1], [torch.tensor([2, 5]), torch.tensor([3])], (16, 32), stride=4)
    assert out.shape == (2, 4, 8) and out.dtype == torch.int64
    full0 = torch.full((16, 32), IGNORE)
    full0[:, :24] = 0
    full0[0:8, 0:16] = 2
    full0[4:12, 8:24] = 5
    assert torch.equal(out[0], full0[2::4, 2::4])
    assert out[0, 0, 0] == 2 and out[0, 1, 2] == 5 and out[0, 0, 6] == IGNORE and out[0, 3, 0] == 0
    assert torch.equal(out[1, :2, :2], torch.tensor([[0, 0], [3, 0]]))
    assert (out[1, 2:] == IGNORE).all() and (out[1, :, 2:] == IGNORE).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semantic_loss_matches_a_float64_cross_entropy_over_unignored_cells(seed):
    torch.manual_seed(seed)
    n, c, k = 2, 8, int(torch.randint(1, 6, ()))
    h, w = 32 * int(torch.randint(1, 3, ())), 32 * int(torch.randint(1, 3, ()))
    head = SemanticAuxHead(c, k, channels=12, num_convs=2)
    levels = [torch.randn(n, c, h // s, w // s) for s in (4, 8, 16, 32)]
    sizes = [(h - 4, w), (h, w - 8)]
    masks = [(torch.rand(3, *hw) > 0.6).to(torch.uint8) for hw in sizes]
    labels = [torch.randint(1, k + 1, (3,)) for _ in sizes]
    loss = head.loss(levels, masks, labels, (h, w))
    logits = head.double()([x.double() for x in levels])
    target = semantic_targets(masks, labels, (h, w), 8)
    assert logits.shape == (n, k + 1, h // 8, w // 8)
    keep = target != IGNORE
    assert keep.sum() < target.numel()  # padding is there and ignored
    logp = logits.log_softmax(1).permute(0, 2, 3, 1)[keep]
    expected = -logp.gather(1, target[keep][:, None]).mean()
    assert abs(loss.item() - expected.item()) < 1e-5


def _detector(**kwargs) -> CascadeMaskRCNN:
    return CascadeMaskRCNN(UniRepLKNetFeatures(**TINY), 3, 3, **{**SMALL_HEAD, "min_size": 64, **kwargs})


def test_semantic_branch_adds_a_weighted_loss_in_training_and_nothing_at_test_time():
    torch.manual_seed(0)
    plain, semantic = _detector(), _detector(semantic_weight=0.5, semantic_channels=8)
    assert plain.semantic_head is None
    missing = semantic.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("semantic_head.") for k in missing)
    images = [torch.rand(3, 64, 96), torch.rand(3, 56, 64)]
    targets = [box_target(64, 96, [[10, 12, 60, 60]], [1]), box_target(56, 64, [[5, 5, 40, 50]], [2])]
    plain.eval(), semantic.eval()
    with torch.no_grad():  # the same weights give the same detections: the branch is not used at test time
        for a, b in zip(plain(images), semantic(images)):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    semantic.train()
    losses = semantic(images, targets)
    head, pad = semantic.semantic_head, (64, 96)
    with torch.no_grad():
        levels = list(semantic._pyramid(semantic.transform(images, targets)[0].tensors)[0].values())[:4]
        raw = head.loss(levels, [t["masks"] for t in targets], [t["labels"] for t in targets], pad)
    assert torch.allclose(losses["loss_semantic"], 0.5 * raw, atol=1e-6)
    sum(losses.values()).backward()
    assert head.classifier.weight.grad.abs().sum() > 0
    assert semantic.backbone.stages[3][0].pwconv1[1].weight.grad.abs().sum() > 0


def test_negative_semantic_weight_is_refused():
    with pytest.raises(ValueError, match="semantic_weight"):
        _detector(semantic_weight=-1.0)


def test_image_label_loss_is_float64_multilabel_bce_on_the_pooled_top_map_in_training_only():
    """`image_label_weight`: a linear head on the image mean of the top backbone map, trained with binary
    cross-entropy against which classes each image holds; checked against a float64 formula, weighted, with a
    gradient into the backbone, and absent from the test-time outputs."""
    torch.manual_seed(1)
    plain, labelled = _detector(), _detector(image_label_weight=0.7)
    assert plain.image_label_head is None
    missing = labelled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["image_label_head.bias", "image_label_head.weight"]
    images = [torch.rand(3, 64, 96), torch.rand(3, 56, 64)]
    targets = [box_target(64, 96, [[10, 12, 60, 60], [2, 2, 20, 30]], [1, 3]),
               box_target(56, 64, [[5, 5, 40, 50]], [2])]
    plain.eval(), labelled.eval()
    with torch.no_grad():
        for a, b in zip(plain(images), labelled(images)):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    labelled.train()
    losses = labelled(images, targets)
    with torch.no_grad():
        x = labelled.transform(images, targets)[0].tensors
        pooled = labelled.backbone(x)[-1].double().mean((2, 3))
        head = labelled.image_label_head
        z = pooled @ head.weight.double().T + head.bias.double()
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    expected = (torch.log1p(torch.exp(-z.abs())) + z.clamp(min=0) - z * y).mean()  # stable BCE with logits
    assert abs(losses["loss_image_labels"].item() - 0.7 * expected.item()) < 1e-5
    losses["loss_image_labels"].backward()
    assert labelled.backbone.downsample_layers[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="image_label_weight"):
        _detector(image_label_weight=-1.0)


def test_per_roi_repeats_each_image_vector_once_per_roi_in_order():
    torch.manual_seed(2)
    context = torch.randn(3, 5)
    boxes = [torch.rand(n, 4) for n in (2, 0, 3)]
    rows = per_roi(context, boxes)
    assert rows.shape == (5, 5)
    assert torch.equal(rows[:2], context[0].expand(2, -1)) and torch.equal(rows[2:], context[2].expand(3, -1))
    assert per_roi(None, boxes) is None


def test_box_head_context_enters_the_class_logits_only_as_a_float64_concatenation():
    torch.manual_seed(3)
    head = BoxHead(4, 8, 7, num_convs=1, conv_channels=8, fc_channels=16, context_channels=6).eval()
    x, context = torch.randn(5, 8, 7, 7), torch.randn(5, 6)
    logits, deltas = head(x, context)
    with torch.no_grad():
        fc = head.shared(x).double()
        expected = torch.cat([fc, context.double()], 1) @ head.cls_score.weight.double().T + head.cls_score.bias
    assert torch.allclose(logits.double(), expected, atol=1e-5)
    logits2, deltas2 = head(x, context + 1.0)
    assert not torch.allclose(logits, logits2) and torch.equal(deltas, deltas2)
    for bad in (None, torch.randn(5, 4), torch.randn(4, 6)):
        with pytest.raises(ValueError, match="context"):
            head(x, bad)


def test_roi_context_feeds_the_pooled_top_map_to_every_stage_classifier():
    """`roi_context`: with its classifier columns zeroed the detector matches the plain one exactly (it enters
    nothing else); with them trained, the class loss reaches the backbone through the pooled top map."""
    torch.manual_seed(4)
    plain, contextual = _detector(), _detector(roi_context=5)
    state = plain.state_dict()
    for key in [k for k in state if k.endswith("cls_score.weight")]:  # the context columns are zero
        state[key] = torch.cat([state[key], torch.zeros(len(state[key]), 5)], 1)
    missing = contextual.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["roi_context.0.bias", "roi_context.0.weight"]
    images = [torch.rand(3, 64, 96), torch.rand(3, 56, 64)]
    plain.eval(), contextual.eval()
    with torch.no_grad():
        for a, b in zip(plain(images), contextual(images)):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
        for head in contextual.roi_heads.box_heads:
            head.cls_score.weight[:, -5:].normal_()
        changed = contextual(images)
    assert any(not torch.equal(a["scores"], b["scores"]) for a, b in zip(plain(images), changed))
    contextual.train()
    targets = [box_target(64, 96, [[10, 12, 60, 60]], [1]), box_target(56, 64, [[5, 5, 40, 50]], [2])]
    contextual(images, targets)["s0.loss_cls"].backward()
    assert contextual.roi_context[0].weight.grad.abs().sum() > 0
    assert contextual.backbone.stages[3][0].pwconv1[1].weight.grad.abs().sum() > 0
    assert len(contextual.to("meta").forward_dummy(torch.empty(1, 3, 64, 64, device="meta"), 7, 3)) > 0
    with pytest.raises(ValueError, match="roi_context"):
        _detector(roi_context=-1)
