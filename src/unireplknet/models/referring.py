"""Referring video object segmentation (paper §3.4, Table 15): a clip and a sentence -> the mask of the object the
sentence names, in every frame.

::

    frames (B, T, 3, H, W) ─► each frame with its neighbours t-r..t+r as channels (B·T, 3(2r+1), H, W)
                           ─► UniRepLKNet (features of the 4 stages, strides 4-32)
                           ─► FPN top-down to stride 8, width D ─► LayerNorm
    tokens (B, L) ─► text encoder (B, L, D) ──────────────────────► fusion (asymmetric large-kernel conv with
                                                                    the sentence as the kernel, or cross-attention)
                           ─► UniRepLKNet block (K = 7) ─► + stride-4 features ─► upsampled to the frame, with its
                              pixels (a 3×3 conv of the RGB frame) ─► GELU, 1×1 conv ─► mask logits (B, T, H, W)

Both fusions have 4·D·(D+1) parameters. The asymmetric one reshapes the L token features into a Kh×Kw kernel
(Kh·Kw = L, the most square grid) and runs it over each frame's D-channel map, depthwise, one kernel per
sentence (:class:`~unireplknet.layers.asymmetric_fusion.AsymmetricFusion`: D×D projections of the map, the kernel
and the result), then mixes channels (a D×D 1×1 conv on GELU, residual). Cross-attention lets every position of
the map attend to the words (4 heads, q/k/v/o projections).

A bare clip (no tokens) is segmented with the empty sentence: what ``bench``, ``reparam`` and ``erf`` feed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unireplknet.layers import LayerNorm2d
from unireplknet.layers.asymmetric_fusion import AsymmetricFusion
from unireplknet.modalities.text import build_text_encoder
from unireplknet.modalities.video import grid_shape
from unireplknet.models.features import UniRepLKNetFeatures
from unireplknet.models.unireplknet import UniRepLKNetBlock

__all__ = ["FUSIONS", "AsymmetricTextFusion", "CrossAttentionFusion", "FrameNeighbours", "ReferringSegmenter",
           "from_meta"]


class FrameNeighbours(nn.Module):
    """The video embedder: (B, T, C, H, W) -> (B·T, C·(2r+1), H, W), frame t with frames t-r..t+r (clamped at
    the ends) as channels, so the per-frame backbone sees the motion. No parameters."""

    def __init__(self, radius: int = 1) -> None:
        super().__init__()
        self.radius = radius

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5:
            raise ValueError(f"frames must be (B, T, C, H, W), got {tuple(frames.shape)}")
        T, r = frames.shape[1], self.radius
        idx = (torch.arange(T, device=frames.device)[:, None]
               + torch.arange(-r, r + 1, device=frames.device)[None]).clamp(0, T - 1)
        return frames[:, idx].flatten(0, 1).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"radius={self.radius}"


class AsymmetricTextFusion(nn.Module):
    """The sentence as a per-sample depthwise kernel over the visual map (paper §3.4), then a channel mix:
    x (N, D, h, w), text (N, L, D) -> (N, D, h, w). 4·D·(D+1) parameters."""

    def __init__(self, dim: int, tokens: int) -> None:
        super().__init__()
        self.kernel = grid_shape(tokens)  # (Kh, Kw), Kh·Kw = L
        self.fuse = AsymmetricFusion(dim, method="conv")
        self.mix = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        N, L, D = text.shape
        kernel = text.transpose(1, 2).reshape(N, D, *self.kernel)
        z = self.fuse(x, kernel)
        return z + self.mix(F.gelu(z))


class CrossAttentionFusion(nn.Module):
    """Every map position attends to the words: x + W_o·softmax(QKᵀ/√d)V, 4 heads, padding masked:
    x (N, D, h, w), text (N, L, D) -> (N, D, h, w). 4·D·(D+1) parameters."""

    def __init__(self, dim: int, tokens: int, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, text: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        N, D, h, w = x.shape
        q = x.flatten(2).transpose(1, 2)  # (N, h·w, D)
        pad = ~valid
        pad[:, 0] = False  # the empty sentence: attend to its first position
        out = self.attn(q, text, text, key_padding_mask=pad, need_weights=False)[0]
        return x + out.transpose(1, 2).reshape(N, D, h, w)


FUSIONS: dict[str, type[nn.Module]] = {"asymmetric": AsymmetricTextFusion, "cross_attention": CrossAttentionFusion}


class ReferringSegmenter(nn.Module):
    """(frames (B, T, 3, H, W), tokens (B, L) int64) -> mask logits (B, T, H, W); see the module docstring.

    ``backbone``: UniRepLKNet kwargs (depths, dims, kernel_sizes, ...); ``text``: the text encoder's spec
    (:func:`unireplknet.modalities.text.build_text_encoder`, with ``dim`` = ``dim`` and ``max_len`` = L;
    ``text_pretrained``: a Hugging Face encoder starts from the hub's weights).
    """

    def __init__(self, backbone: Mapping[str, Any], text: Mapping[str, Any], fusion: str = "asymmetric",
                 dim: int = 64, context: int = 1, refine_dim: int = 8, deploy: bool = False,
                 drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-6,
                 text_pretrained: bool = False) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
        if text["dim"] != dim:
            raise ValueError(f"the text encoder's width {text['dim']} must equal the fusion width {dim}")
        self.max_len = int(text["max_len"])
        self.embedder = FrameNeighbours(context)
        self.backbone = UniRepLKNetFeatures(in_chans=3 * (2 * context + 1), deploy=deploy,
                                            drop_path_rate=drop_path_rate,
                                            layer_scale_init_value=layer_scale_init_value, **backbone)
        self.text = build_text_encoder(text, text_pretrained)
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in self.backbone.dims)
        self.norm = LayerNorm2d(dim)
        self.fusion = FUSIONS[fusion](dim, self.max_len)
        self.post = UniRepLKNetBlock(dim, 7, deploy=deploy, layer_scale_init_value=layer_scale_init_value)
        self.smooth = nn.Sequential(nn.Conv2d(dim, 2 * refine_dim, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(2 * refine_dim, refine_dim, 1))
        self.rgb = nn.Conv2d(3, refine_dim, 3, padding=1)
        self.out = nn.Conv2d(refine_dim, 1, 1)

    @property
    def deploy(self) -> bool:
        return bool(self.backbone.deploy)

    def reparameterize(self) -> ReferringSegmenter:
        """The deploy form of the backbone and the post-fusion block, in place (paper §3.1)."""
        self.backbone.reparameterize()
        self.post.reparameterize()
        return self

    def forward(self, inputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(inputs, torch.Tensor):  # a bare clip: the empty sentence
            frames = inputs
            tokens = torch.full((frames.shape[0], self.max_len), self.text.pad_id, dtype=torch.long,
                                device=frames.device)
        else:
            frames, tokens = inputs
        B, T, _, H, W = frames.shape
        feats = self.backbone(self.embedder(frames))  # strides 4, 8, 16, 32
        p = self.lateral[3](feats[3])
        for i in (2, 1):
            p = F.interpolate(p, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            p = p + self.lateral[i](feats[i])
        words, valid = self.text(tokens)  # (B, L, D), (B, L)
        p = self.fusion(self.norm(p), words.repeat_interleave(T, 0), valid.repeat_interleave(T, 0))
        p = self.post(p)
        p = F.interpolate(p, size=feats[0].shape[-2:], mode="bilinear", align_corners=False)
        p = self.smooth(p + self.lateral[0](feats[0]))
        p = F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False)
        logits = self.out(F.gelu(p + self.rgb(frames.flatten(0, 1))))
        return logits.view(B, T, H, W)


def from_meta(meta: Mapping[str, Any]) -> ReferringSegmenter:
    """The (untrained) model a checkpoint's ``meta`` describes (``meta['referring']`` = the constructor's
    arguments but ``deploy``)."""
    return ReferringSegmenter(**dict(meta["referring"]), deploy=bool(meta.get("deploy", False)))
