"""Cascade Mask R-CNN and Mask R-CNN with a UniRepLKNet backbone (paper §4, Table 6), on torchvision parts.

images (list of (3, H, W) in [0, 1]) -> resize + normalize (torchvision's GeneralizedRCNNTransform) ->
UniRepLKNetFeatures (4 maps, strides 4…32, ``norm0..3``) -> FPN (256 channels, 5 levels: the extra one by
max-pool) -> RPN (anchors 8 × stride, ratios 0.5/1/2) -> :class:`~.detection_heads.CascadeRoIHeads`.
Training returns a dict of losses; evaluation returns per image ``dict(boxes (D, 4) xyxy in the input
image's pixels, labels (D,) in 1..K, scores (D,), masks (D, H, W) bool)``.

``MODELS`` maps ``cascade_mask_rcnn_unireplknet_{a…xl}`` and ``mask_rcnn_unireplknet_{a…xl}`` to builders
``(num_classes=80, pretrained_backbone=False | True | path, **kwargs)``; ``cascade_mask_rcnn_timm`` and
``mask_rcnn_timm`` take ``timm_backbone="convnext_atto"`` (any timm model with stride-4…32 features) instead:
the same detector on a peer backbone, for comparisons.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from unireplknet.errors import CheckpointError
from unireplknet.models.checkpoint import _form_hint, extract_state_dict, load_checkpoint, read_checkpoint
from unireplknet.models.detection_heads import CascadeRoIHeads
from unireplknet.models.detection_semantic import SemanticAuxHead, image_label_loss
from unireplknet.models.features import OnBackbone, TimmFeatures, UniRepLKNetFeatures
from unireplknet.models.variants import VARIANTS

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Constructor arguments that go to the backbone rather than the detector.
BACKBONE_KWARGS = ("depths", "dims", "drop_path_rate", "kernel_sizes", "with_cp", "deploy", "attempt_use_lk_impl",
                   "use_sync_bn", "layer_scale_init_value", "in_chans", "ffn_factor")


class StridedAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with the levels' true strides (it infers them as padded size // grid
    size, which is off for the max-pooled level when H/32 is odd)."""

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        self.strides = tuple(strides)

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors([f.shape[-2:] for f in feature_maps], strides))
        return [anchors for _ in image_list.image_sizes]


class CascadeMaskRCNN(OnBackbone, nn.Module):
    """UniRepLKNet + FPN + RPN + cascade RoI heads; ``num_stages=1`` is plain (Mask) R-CNN.

    The defaults are the reference's (Table 6 configuration); the CPU recipes shrink ``fpn_channels``,
    ``fc_channels``, the proposal and RoI-sample counts and the image size. ``resize_in_training=False``
    (default) leaves training images at the size the data pipeline made them (its multi-scale resize);
    evaluation always resizes to ``min_size`` / ``max_size`` and maps the outputs back.
    """

    def __init__(self, backbone: UniRepLKNetFeatures | TimmFeatures, num_classes: int = 80, num_stages: int = 3,
                 fpn_channels: int = 256, fc_channels: int = 1024, num_convs: int = 4, num_fcs: int = 1,
                 mask_channels: int = 256, mask_convs: int = 4, with_mask: bool = True,
                 min_size: int | Sequence[int] = 800, max_size: int = 1333, resize_in_training: bool = False,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 anchor_scale: int = 8, rpn_pre_nms_train: int = 2000, rpn_post_nms_train: int = 2000,
                 rpn_pre_nms_test: int = 1000, rpn_post_nms_test: int = 1000, rpn_nms: float = 0.7,
                 rpn_samples: int = 256, roi_samples: int = 512, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, mask_thresh: float = 0.5,
                 roi_finest_scale: float = 56.0, semantic_weight: float = 0.0, semantic_channels: int = 128,
                 semantic_convs: int = 2, global_context: bool = False, image_label_weight: float = 0.0,
                 roi_context: int = 0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.mask_thresh = num_classes, mask_thresh
        self.transform = GeneralizedRCNNTransform(min_size, max_size, list(image_mean), list(image_std),
                                                  size_divisible=32, _skip_resize=not resize_in_training)
        self.backbone = backbone
        strides = (4, 8, 16, 32, 64)
        self.neck = FeaturePyramidNetwork([backbone.dims[i] for i in backbone.out_indices], fpn_channels,
                                          extra_blocks=LastLevelMaxPool())
        anchors = StridedAnchorGenerator([(anchor_scale * s,) for s in strides], [(0.5, 1.0, 2.0)] * 5, strides)
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(fpn_channels, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=rpn_samples, positive_fraction=0.5,
            pre_nms_top_n=dict(training=rpn_pre_nms_train, testing=rpn_pre_nms_test),
            post_nms_top_n=dict(training=rpn_post_nms_train, testing=rpn_post_nms_test), nms_thresh=rpn_nms)
        self.roi_heads = CascadeRoIHeads(
            num_classes, num_stages, fpn_channels, num_convs=num_convs, num_fcs=num_fcs, fc_channels=fc_channels,
            with_mask=with_mask, mask_channels=mask_channels, mask_convs=mask_convs, roi_samples=roi_samples,
            score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
            strides=strides[:4], roi_finest_scale=roi_finest_scale, context_channels=roi_context)
        # ParseNet-style global context (off by default; not in the reference): the image-averaged top backbone
        # map, projected to fpn_channels, added to every pyramid level
        self.global_context = nn.Linear(backbone.dims[backbone.out_indices[-1]], fpn_channels) \
            if global_context else None
        if semantic_weight < 0:
            raise ValueError(f"semantic_weight must be >= 0, got {semantic_weight}")
        self.semantic_weight = semantic_weight  # > 0: HTC's semantic branch as a training-only auxiliary loss
        self.semantic_head = SemanticAuxHead(fpn_channels, num_classes, semantic_channels, semantic_convs) \
            if semantic_weight > 0 else None
        if roi_context < 0:
            raise ValueError(f"roi_context must be >= 0, got {roi_context}")
        # > 0 (not in the reference): the image-averaged top map, projected to roi_context channels (+ ReLU),
        # is concatenated to every RoI's fc features before the box classifier of each stage
        self.roi_context = nn.Sequential(nn.Linear(backbone.dims[backbone.out_indices[-1]], roi_context),
                                         nn.ReLU(inplace=True)) if roi_context else None
        if image_label_weight < 0:
            raise ValueError(f"image_label_weight must be >= 0, got {image_label_weight}")
        # > 0: a training-only multi-label loss on the image-averaged top map (which classes the image holds)
        self.image_label_weight = image_label_weight
        self.image_label_head = nn.Linear(backbone.dims[backbone.out_indices[-1]], num_classes) \
            if image_label_weight > 0 else None

    def _pyramid(self, x: torch.Tensor) -> tuple[OrderedDict[str, torch.Tensor], torch.Tensor]:
        """Images (N, 3, H, W) -> FPN levels, and the image mean of the top backbone map (N, C5)."""
        features = self.backbone(x)
        pooled = features[-1].mean((2, 3))
        pyramid = self.neck(OrderedDict((str(i), f) for i, f in enumerate(features)))
        if self.global_context is not None:
            context = self.global_context(pooled)[:, :, None, None]  # (N, C, 1, 1)
            pyramid = OrderedDict((k, v + context) for k, v in pyramid.items())
        return pyramid, pooled

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training: images + targets (``boxes`` (n, 4) xyxy float, ``labels`` (n,) int64 in 1..K, ``masks``
        (n, H, W) uint8) -> losses. Evaluation: images -> detections (see the module docstring)."""
        if self.training and targets is None:
            raise ValueError("training needs targets; call model.eval() for predictions")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        pyramid, pooled = self._pyramid(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, pyramid, targets)
        levels = list(pyramid.values())[:4]
        context = self.roi_context(pooled) if self.roi_context is not None else None
        detections, roi_losses = self.roi_heads(levels, proposals, batch.image_sizes, targets, context)
        if self.training:
            if self.semantic_head is not None:
                masks, labels = [t["masks"] for t in targets], [t["labels"] for t in targets]
                semantic = self.semantic_head.loss(levels, masks, labels, tuple(batch.tensors.shape[-2:]))
                roi_losses["loss_semantic"] = self.semantic_weight * semantic
            if self.image_label_head is not None:
                logits = self.image_label_head(pooled)
                roi_losses["loss_image_labels"] = self.image_label_weight * image_label_loss(
                    logits, [t["labels"] for t in targets])
            return {**rpn_losses, **roi_losses}
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        for det in detections:
            if "masks" in det:
                det["masks"] = det["masks"][:, 0] >= self.mask_thresh
        return detections

    def forward_dummy(self, x: torch.Tensor, num_rois: int = 1000, num_mask_rois: int = 100) -> list[torch.Tensor]:
        """MMDetection's ``forward_dummy`` (what its ``get_flops`` counts): backbone, FPN and RPN head on
        ``x`` (N, 3, H, W), then every stage's box head on ``num_rois`` RoIs and every stage's mask head on
        ``num_mask_rois``; RoIAlign, anchors, NMS and decoding are left out. Runs on the meta device."""
        levels, pooled = self._pyramid(x)
        pyramid = list(levels.values())
        outs = [t for pair in zip(*self.rpn.head(pyramid)) for t in pair]
        c = pyramid[0].shape[1]
        box_feats = x.new_empty((num_rois, c, 7, 7))
        mask_feats = x.new_empty((num_mask_rois, c, 14, 14))
        context = None
        if self.roi_context is not None:
            context = self.roi_context(pooled[:1]).expand(num_rois, -1)
        for head in self.roi_heads.box_heads:
            outs.extend(head(box_feats, context))
        for head in getattr(self.roi_heads, "mask_heads", []):
            outs.append(head(mask_feats))
        return outs

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The backbone's layer groups for layer-wise lr decay (timm's ``param_groups_layer_decay``); neck and
        heads match nothing and so form the last group."""
        return self.backbone_groups(coarse)


# -- loading -------------------------------------------------------------------------------------------------
def backbone_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone weights of a checkpoint: an official dense one (``state_dict`` -> ``backbone.*``, the
    neck and heads dropped) or a classification one (its final ``norm``/``head`` dropped)."""
    state = extract_state_dict(obj)
    if any(k.startswith("backbone.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k: v for k, v in state.items() if not k.startswith(("head.", "norm."))}


def load_backbone(model: CascadeMaskRCNN | UniRepLKNetFeatures, source: str | Path | Mapping[str, Any]) -> None:
    """Load a dense (``backbone.*``) or classification checkpoint into the backbone; a classification one
    leaves the stage norms ``norm0..3`` fresh. Anything else that does not fit is a ``CheckpointError``."""
    backbone = model.backbone if isinstance(model, CascadeMaskRCNN) else model
    obj = source if isinstance(source, Mapping) else read_checkpoint(source)
    state = backbone_state_dict(obj)
    if not any(k.startswith("stages.") for k in state):
        raise CheckpointError(f"{source if not isinstance(source, Mapping) else 'the checkpoint'} holds no "
                              "UniRepLKNet backbone weights (no 'stages.*' or 'backbone.stages.*' keys)")
    result = load_checkpoint(backbone, state, strict=False)
    missing = [k for k in result.missing_keys if not re.match(r"norm\d\.", k)]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"backbone weights do not fit {type(backbone).__name__}"
                              f"(dims {backbone.dims}): missing {missing[:5]} ({len(missing)} in all), "
                              f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)} in all)"
                              + (_form_hint(backbone, missing, result.unexpected_keys)
                                 or "; pick the model of the checkpoint's size"))
    logger.info("backbone weights loaded (%d tensors; %s)", len(state),
                "stage norms fresh" if result.missing_keys else "stage norms included")


# -- builders -------------------------------------------------------------------------------------------------
def build_detector(variant: str | None, num_classes: int = 80, pretrained_backbone: bool | str | Path = False,
                   num_stages: int = 3, timm_backbone: str | None = None, **kwargs: Any) -> CascadeMaskRCNN:
    """A (Cascade) Mask R-CNN on ``unireplknet_{variant}``, or on the timm model ``timm_backbone`` (then
    ``variant`` is None); ``kwargs`` named in :data:`BACKBONE_KWARGS` go to the backbone, the rest to
    :class:`CascadeMaskRCNN`. ``pretrained_backbone``: True for the released ImageNet weights, or (UniRepLKNet)
    a checkpoint path (dense or classification)."""
    backbone_kwargs = {k: kwargs.pop(k) for k in BACKBONE_KWARGS if k in kwargs}
    if timm_backbone or variant is None:
        unused = sorted(set(backbone_kwargs) - {"drop_path_rate", "deploy"})
        if not timm_backbone or unused or not isinstance(pretrained_backbone, bool):
            raise ValueError(f"a timm backbone takes drop_path_rate and pretrained_backbone=True|False only (got "
                             f"timm_backbone={timm_backbone!r}, {', '.join(unused) or pretrained_backbone!r})")
        timm_features = TimmFeatures(timm_backbone, pretrained_backbone, backbone_kwargs.get("drop_path_rate", 0.0))
        return CascadeMaskRCNN(timm_features, num_classes=num_classes, num_stages=num_stages, **kwargs)
    name = f"unireplknet_{variant}"
    spec = VARIANTS[name]
    deploy = bool(backbone_kwargs.pop("deploy", False))  # weights are training form: load, then convert
    backbone_kwargs = {"depths": spec.depths, "dims": spec.dims, **backbone_kwargs}  # (custom depths/dims win)
    backbone = UniRepLKNetFeatures(deploy=deploy and not pretrained_backbone, **backbone_kwargs)
    model = CascadeMaskRCNN(backbone, num_classes=num_classes, num_stages=num_stages, **kwargs)
    if pretrained_backbone is True:
        from unireplknet.models.registry import create_model

        released = create_model(name, pretrained=True, features_only=True)
        load_backbone(model, {f"backbone.{k}": v for k, v in released.state_dict().items()
                              if not k.startswith("norm")})
    elif pretrained_backbone:
        load_backbone(model, pretrained_backbone)
    if deploy and pretrained_backbone:
        model.reparameterize()
    return model


_SIZES = ("a", "f", "p", "n", "t", "s", "b", "l", "xl")
MODELS: dict[str, Callable[..., CascadeMaskRCNN]] = {
    **{f"cascade_mask_rcnn_unireplknet_{v}": partial(build_detector, v, num_stages=3) for v in _SIZES},
    **{f"mask_rcnn_unireplknet_{v}": partial(build_detector, v, num_stages=1) for v in _SIZES},
    "cascade_mask_rcnn_timm": partial(build_detector, None, num_stages=3),
    "mask_rcnn_timm": partial(build_detector, None, num_stages=1),
}


# -- complexity (Table 6) -------------------------------------------------------------------------------------
#: Table 6's Cascade Mask R-CNN rows: params (M) and GFLOPs at 1280×800 (T/S ImageNet-1K, B/L/XL 22K).
PAPER_TABLE6 = {"t": (89, 749), "s": (113, 835), "b": (155, 978), "l": (276, 1385), "xl": (443, 1952)}


@dataclass
class DetectionComplexity:
    """Params and GMACs of one detector, beside Table 6's figures."""

    name: str
    params: int
    gmacs: float
    paper_params_m: float | None
    paper_gflops: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def detection_complexity(names: Sequence[str] | None = None, input_hw: tuple[int, int] = (800, 1280),
                         num_classes: int = 80) -> list[DetectionComplexity]:
    """Parameters of the training-form detector and multiply-accumulates of :meth:`~CascadeMaskRCNN.forward_dummy`
    on one ``input_hw`` image with the training-form backbone (what MMDetection's ``get_flops`` counts on the
    model built from the config), on the meta device. Table 6's "FLOPs" are these MACs (mmcv's convention)."""
    rows = []
    for name in names or [f"cascade_mask_rcnn_unireplknet_{v}" for v in PAPER_TABLE6]:
        with torch.device("meta"):
            model = MODELS[name](num_classes=num_classes).eval()
            x = torch.empty(1, 3, *input_hw)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.forward_dummy(x)
        paper = PAPER_TABLE6.get(name.rsplit("_", 1)[-1]) if name.startswith("cascade") else None
        rows.append(DetectionComplexity(name, sum(p.numel() for p in model.parameters()),
                                        counter.get_total_flops() / 2e9, *(paper or (None, None))))
    return rows
