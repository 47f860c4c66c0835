"""RoI heads of (Cascade) Mask R-CNN on torchvision's detection building blocks (paper §4, Table 6).

Follows the reference's MMDetection configuration (``/work/shared/reference/dense_prediction.md``):

- RoI features: RoIAlign (aligned, sampling ratio 0) on the FPN level ``floor(log2(sqrt(wh) / 56))`` of
  strides 4…32 — 7×7 for boxes, 14×14 for masks.
- Box head per stage: 4 shared 3×3 convs (BatchNorm, ReLU) + 1 fc, then a classifier over K+1 classes
  (index 0 is background) and class-specific deltas (4K); the loss is cross-entropy + GIoU on the decoded
  box (weight 10, summed over positives and divided by the number of sampled RoIs).
- Mask head per stage (MMDetection's ``CascadeRoIHead`` repeats one mask head config per stage): 4 3×3
  convs, a ×2 deconv, per-class 28×28 logits, binary cross-entropy against the GT mask cropped by the RoI.
- Cascade: stage t+1 is trained on stage t's decoded boxes (its GT-as-proposal entries removed); at test time
  the class logits are averaged over stages, the boxes come from the last stage and the mask probabilities
  are averaged over the stages' mask heads.

Labels are 1..K for objects and 0 for background (torchvision's convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import (
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    generalized_box_iou_loss,
    remove_small_boxes,
    roi_align,
)

Boxes = list[torch.Tensor]  # one (n_i, 4) xyxy tensor per image
#: Target stds of the deltas per cascade stage (the reference's DeltaXYWHBBoxCoder settings).
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


def boxes_to_rois(boxes: Boxes) -> torch.Tensor:
    """Per-image (n_i, 4) boxes -> (sum n_i, 5) rows of (image index, x1, y1, x2, y2)."""
    index = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(boxes)], dim=1)


class LevelRoIAlign(nn.Module):
    """RoIAlign on one FPN level per RoI: (levels of (N, C, H/s, W/s), per-image boxes) -> (R, C, S, S).

    A box goes to level ``floor(log2(sqrt(w h) / finest_scale + 1e-6))`` clamped to the levels (the FPN
    paper's eq. 1 with k0 = 4 and 224 px, written as MMDetection's SingleRoIExtractor does).
    """

    def __init__(self, output_size: int, strides: Sequence[int] = (4, 8, 16, 32), sampling_ratio: int = 0,
                 finest_scale: float = 56.0, aligned: bool = True) -> None:
        super().__init__()
        self.output_size, self.strides = output_size, tuple(strides)
        self.sampling_ratio, self.finest_scale, self.aligned = sampling_ratio, finest_scale, aligned

    def forward(self, features: Sequence[torch.Tensor], boxes: Boxes) -> torch.Tensor:
        rois = boxes_to_rois(boxes)
        size = (rois[:, 3] - rois[:, 1]).clamp(min=0) * (rois[:, 4] - rois[:, 2]).clamp(min=0)
        levels = torch.floor(torch.log2(size.sqrt() / self.finest_scale + 1e-6)).clamp(0, len(self.strides) - 1)
        out = features[0].new_zeros((len(rois), features[0].shape[1], self.output_size, self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                out[idx] = roi_align(feature, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio,
                                     self.aligned).to(out.dtype)
        return out


class BoxHead(nn.Module):
    """RoI features (R, C, S, S) -> class logits (R, K+1) and class-specific deltas (R, 4K).

    ``num_convs`` 3×3 convs (BatchNorm + ReLU, as the reference's 4conv1fc head) then ``num_fcs`` fc + ReLU
    (torchvision's FastRCNNConvFCHead), then the two predictors. ``context_channels`` > 0 (not in the
    reference): the class predictor also sees a per-RoI image-context vector (R, context_channels),
    concatenated to the fc features, so a RoI's class can depend on the whole image.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, roi_size: int = 7, num_convs: int = 4,
                 conv_channels: int = 256, num_fcs: int = 1, fc_channels: int = 1024,
                 context_channels: int = 0) -> None:
        super().__init__()
        self.num_classes, self.context_channels = num_classes, context_channels
        self.shared = FastRCNNConvFCHead((in_channels, roi_size, roi_size), [conv_channels] * num_convs,
                                         [fc_channels] * num_fcs, norm_layer=nn.BatchNorm2d if num_convs else None)
        self.cls_score = nn.Linear(fc_channels + context_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_channels, 4 * num_classes)
        for m in self.shared.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.shared(x)
        if self.context_channels:
            if context is None or context.shape != (len(x), self.context_channels):
                raise ValueError(f"this box head needs a ({len(x)}, {self.context_channels}) context, got "
                                 f"{None if context is None else tuple(context.shape)}")
            return self.cls_score(torch.cat([x, context], dim=1)), self.bbox_pred(x)
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Sequential):
    """RoI features (R, C, 14, 14) -> per-class mask logits (R, K, 28, 28): 4 convs, deconv ×2, 1×1 conv."""

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 256, num_convs: int = 4) -> None:
        super().__init__(MaskRCNNHeads(in_channels, [channels] * num_convs, dilation=1),
                         MaskRCNNPredictor(channels, channels, num_classes))


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int) -> torch.Tensor:
    """GT masks (G, H, W) cropped by ``boxes`` (R, 4) of their matched GT -> binary (R, size, size) targets."""
    rois = torch.cat([matched[:, None].to(boxes.dtype), boxes], dim=1)
    crops = roi_align(gt_masks[:, None].to(boxes.dtype), rois, size, 1.0, 0, True)[:, 0]
    return (crops >= 0.5).to(boxes.dtype)


def class_deltas(deltas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(R, 4K) class-specific deltas and labels (R,) in 1..K -> the (R, 4) deltas of each RoI's class."""
    return deltas.view(len(deltas), -1, 4)[torch.arange(len(deltas), device=deltas.device), labels - 1]


def per_roi(context: torch.Tensor | None, boxes: Boxes) -> torch.Tensor | None:
    """Per-image vectors (N, C) -> one row per RoI (sum n_i, C), in the order of ``boxes``; None stays None."""
    if context is None:
        return None
    counts = torch.tensor([len(b) for b in boxes], device=context.device)
    return context.repeat_interleave(counts, dim=0)


class CascadeRoIHeads(nn.Module):
    """Cascade R-CNN box stages (+ mask heads): (FPN levels, proposals, image sizes[, targets]) -> detections.

    ``features``: the stride-4…32 FPN maps, each (N, C, H/s, W/s); ``proposals``: per-image (n_i, 4) boxes;
    ``image_sizes``: (h, w) of each image inside the padded batch. Training returns a dict of weighted
    losses; evaluation returns per image ``dict(boxes (D, 4), labels (D,), scores (D,)[, masks (D, 1, 28,
    28) probabilities])`` in the input's coordinates. One stage is plain (Mask) R-CNN.
    """

    def __init__(self, num_classes: int, num_stages: int = 3, in_channels: int = 256,
                 stage_iou: Sequence[float] = (0.5, 0.6, 0.7), stage_weights: Sequence[float] = (1.0, 0.5, 0.25),
                 stage_stds: Sequence[Sequence[float]] = CASCADE_STDS, num_convs: int = 4, num_fcs: int = 1,
                 fc_channels: int = 1024, with_mask: bool = True, mask_channels: int = 256, mask_convs: int = 4,
                 roi_samples: int = 512, positive_fraction: float = 0.25, giou_weight: float = 10.0,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 strides: Sequence[int] = (4, 8, 16, 32), roi_finest_scale: float = 56.0,
                 context_channels: int = 0) -> None:
        super().__init__()
        if not (len(stage_iou) >= num_stages and len(stage_weights) >= num_stages and len(stage_stds) >= num_stages):
            raise ValueError(f"{num_stages} stages need that many IoU thresholds, loss weights and target stds")
        self.num_classes, self.num_stages = num_classes, num_stages
        self.stage_iou = tuple(stage_iou[:num_stages])
        self.stage_weights = tuple(stage_weights[:num_stages])
        self.coders = [BoxCoder(tuple(1.0 / s for s in stds), bbox_xform_clip=math.log(1000.0 / 16))
                       for stds in stage_stds[:num_stages]]
        self.sampler = BalancedPositiveNegativeSampler(roi_samples, positive_fraction)
        self.giou_weight = giou_weight
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.box_pool = LevelRoIAlign(7, strides, finest_scale=roi_finest_scale)
        self.box_heads = nn.ModuleList(
            BoxHead(num_classes, in_channels, 7, num_convs, in_channels, num_fcs, fc_channels, context_channels)
            for _ in range(num_stages))
        self.with_mask = with_mask
        if with_mask:
            self.mask_pool = LevelRoIAlign(14, strides, finest_scale=roi_finest_scale)
            self.mask_heads = nn.ModuleList(MaskHead(num_classes, in_channels, mask_channels, mask_convs)
                                            for _ in range(num_stages))

    # -- training ------------------------------------------------------------------------------------------
    def _sample(self, proposals: Boxes, targets: list[dict[str, torch.Tensor]], iou: float
                ) -> tuple[Boxes, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Add the GT boxes as proposals, match at ``iou``, sample; -> boxes, labels, matched GT, is-GT."""
        matcher = Matcher(iou, iou, allow_low_quality_matches=False)
        boxes, labels, matched, is_gt = [], [], [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            cand = torch.cat([props, gt])
            flag = torch.cat([torch.zeros(len(props), dtype=torch.bool, device=props.device),
                              torch.ones(len(gt), dtype=torch.bool, device=props.device)])
            if len(gt):
                idx = matcher(box_iou(gt, cand))
                lab = t["labels"][idx.clamp(min=0)].clone()
                lab[idx < 0] = 0
            else:
                idx = torch.zeros(len(cand), dtype=torch.int64, device=props.device)
                lab = torch.zeros(len(cand), dtype=torch.int64, device=props.device)
            boxes.append(cand)
            labels.append(lab)
            matched.append(idx.clamp(min=0))
            is_gt.append(flag)
        pos, neg = self.sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg)]
        return ([b[k] for b, k in zip(boxes, keep)], [lab[k] for lab, k in zip(labels, keep)],
                [m[k] for m, k in zip(matched, keep)], [g[k] for g, k in zip(is_gt, keep)])

    def _stage_losses(self, stage: int, features: Sequence[torch.Tensor], boxes: Boxes, labels: list[torch.Tensor],
                      matched: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                      context: torch.Tensor | None = None
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        logits, deltas = self.box_heads[stage](self.box_pool(features, boxes), per_roi(context, boxes))
        lab = torch.cat(labels)
        pos = torch.where(lab > 0)[0]
        rois = torch.cat(boxes)
        gt_boxes = torch.cat([t["boxes"][m] if len(t["boxes"]) else rois.new_zeros((len(m), 4))
                              for t, m in zip(targets, matched)])
        pred = self.coders[stage].decode_single(class_deltas(deltas[pos], lab[pos]), rois[pos])
        losses = {"loss_cls": F.cross_entropy(logits, lab),
                  "loss_box": self.giou_weight * generalized_box_iou_loss(pred, gt_boxes[pos], reduction="sum")
                  / max(len(lab), 1)}
        if self.with_mask:
            pos_boxes = [b[lb > 0] for b, lb in zip(boxes, labels)]
            mask_logits = self.mask_heads[stage](self.mask_pool(features, pos_boxes))
            if len(pos):
                target = torch.cat([mask_targets(t["masks"], b, m[lb > 0], mask_logits.shape[-1])
                                    for t, b, m, lb in zip(targets, pos_boxes, matched, labels) if (lb > 0).any()])
                chosen = mask_logits[torch.arange(len(pos), device=lab.device), lab[pos] - 1]
                losses["loss_mask"] = F.binary_cross_entropy_with_logits(chosen, target)
            else:
                losses["loss_mask"] = mask_logits.sum() * 0
        return losses, logits, deltas

    # -- shared ----------------------------------------------------------------------------------------------
    def _refine(self, stage: int, boxes: Boxes, logits: torch.Tensor, deltas: torch.Tensor,
                image_sizes: Sequence[tuple[int, int]], labels: torch.Tensor | None = None) -> Boxes:
        """Decode each RoI's deltas for its label (training: the GT label, else the best object class)."""
        best = logits[:, 1:].argmax(dim=1) + 1
        lab = best if labels is None else torch.where(labels > 0, labels, best)
        new = self.coders[stage].decode_single(class_deltas(deltas, lab).detach(), torch.cat(boxes))
        return [clip_boxes_to_image(b, size) for b, size in zip(new.split([len(b) for b in boxes]), image_sizes)]

    def forward(self, features: Sequence[torch.Tensor], proposals: Boxes, image_sizes: Sequence[tuple[int, int]],
                targets: list[dict[str, torch.Tensor]] | None = None, context: torch.Tensor | None = None
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """``context``: (N, context_channels) image-context vectors when the box heads take one."""
        if self.training:
            if targets is None:
                raise ValueError("training needs targets (boxes, labels and, with masks, masks per image)")
            losses: dict[str, torch.Tensor] = {}
            boxes = [p.detach() for p in proposals]
            for t in range(self.num_stages):
                boxes, labels, matched, is_gt = self._sample(boxes, targets, self.stage_iou[t])
                stage_losses, logits, deltas = self._stage_losses(t, features, boxes, labels, matched, targets,
                                                                  context)
                prefix = f"s{t}." if self.num_stages > 1 else ""
                losses.update({prefix + k: v * self.stage_weights[t] for k, v in stage_losses.items()})
                if t + 1 < self.num_stages:
                    with torch.no_grad():
                        refined = self._refine(t, boxes, logits, deltas, image_sizes, torch.cat(labels))
                    boxes = [b[~g] for b, g in zip(refined, is_gt)]
            return [], losses
        return self.predict(features, proposals, image_sizes, context), {}

    @torch.no_grad()
    def predict(self, features: Sequence[torch.Tensor], proposals: Boxes, image_sizes: Sequence[tuple[int, int]],
                context: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        boxes, mean_logits = list(proposals), 0.0
        for t in range(self.num_stages):
            logits, deltas = self.box_heads[t](self.box_pool(features, boxes), per_roi(context, boxes))
            mean_logits = mean_logits + logits / self.num_stages
            if t + 1 < self.num_stages:
                boxes = self._refine(t, boxes, logits, deltas, image_sizes)
        scores = F.softmax(mean_logits, dim=-1)[:, 1:]  # (R, K)
        n, k = scores.shape
        decoded = self.coders[-1].decode_single(deltas.reshape(-1, 4),
                                                torch.cat(boxes).repeat_interleave(k, dim=0)).view(n, k, 4)
        results = []
        for sc, bx, size in zip(scores.split([len(b) for b in boxes]), decoded.split([len(b) for b in boxes]),
                                image_sizes):
            bx = clip_boxes_to_image(bx, size).reshape(-1, 4)
            labels = torch.arange(1, k + 1, device=sc.device).repeat(len(sc))
            sc = sc.reshape(-1)
            keep = torch.where(sc > self.score_thresh)[0]
            bx, sc, labels = bx[keep], sc[keep], labels[keep]
            keep = remove_small_boxes(bx, 1e-2)
            bx, sc, labels = bx[keep], sc[keep], labels[keep]
            keep = batched_nms(bx, sc, labels, self.nms_thresh)[: self.detections_per_img]
            results.append(dict(boxes=bx[keep], labels=labels[keep], scores=sc[keep]))
        if self.with_mask:
            det_boxes = [r["boxes"] for r in results]
            feats = self.mask_pool(features, det_boxes)
            lab = torch.cat([r["labels"] for r in results])
            idx = torch.arange(len(lab), device=lab.device)
            probs = sum(head(feats)[idx, lab - 1].sigmoid() for head in self.mask_heads) / self.num_stages
            for r, p in zip(results, probs.split([len(b) for b in det_boxes])):
                r["masks"] = p[:, None]
        return results
