"""The UniRepLKNet backbone (paper §3.2, Fig. 3, Table 4).

Key names follow the official checkpoints, so official state dicts load with plain ``load_state_dict``:
``downsample_layers.{0..3}`` (stem and downsampling), ``stages.{i}.{j}`` (blocks), ``norm`` and ``head``.
(No ``from __future__ import annotations`` here: FX code generation needs the forward's annotations evaluated.)
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from unireplknet.layers import (
    GRN,
    DilatedReparamBlock,
    DropPath,
    LayerNorm2d,
    SEBlock,
    ToChannelsFirst,
    ToChannelsLast,
    fuse_bn,
    merge_bn_into_linear,
    scaled_linear,
)
from unireplknet.layers.dilated_reparam import uses_dilated_reparam
from unireplknet.models.variants import default_kernel_sizes
from unireplknet.ops import DepthwiseConv2d

__all__ = ["POOL_TYPES", "UniRepLKNet", "UniRepLKNetBlock"]

#: Global pooling types of the head (``global_pool``): timm's names; '' keeps the map (per-position outputs).
#: timm's 'catavgmax' doubles the pooled width, which the head's LayerNorm (official weights) cannot take.
POOL_TYPES = ("avg", "max", "avgmax", "")


class UniRepLKNetBlock(nn.Module):
    """A LarK (Dilated Reparam Block, see ``uses_dilated_reparam``) or SmaK (K = 3) block; (N, C, H, W) -> same.

    x + drop_path(gamma * BN(Linear(GRN(GELU(Linear(SE(BN(DWConv(x)))))))))  — paper Fig. 3.
    ``kernel_size=0`` drops the spatial conv and its BatchNorm. The deploy form has no BatchNorm,
    no dilated branch, no layer scale and no GRN bias; ``reparameterize()`` gets there exactly.
    """

    def __init__(self, dim: int, kernel_size: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6,
                 deploy: bool = False, attempt_use_lk_impl: bool = True, with_cp: bool = False,
                 use_sync_bn: bool = False, ffn_factor: int = 4) -> None:
        super().__init__()
        if kernel_size != 0 and kernel_size % 2 != 1:
            raise ValueError(f"kernel sizes must be odd (or 0 for none), got {kernel_size}")
        self.kernel_size = kernel_size
        self.with_cp = with_cp
        self.deploy = deploy
        backend = "auto" if attempt_use_lk_impl else "torch"
        if kernel_size == 0:
            self.dwconv: nn.Module = nn.Identity()
        elif uses_dilated_reparam(kernel_size):
            self.dwconv = DilatedReparamBlock(dim, kernel_size, deploy=deploy, use_sync_bn=use_sync_bn,
                                              backend=backend)
        else:
            self.dwconv = DepthwiseConv2d(dim, kernel_size, bias=deploy, backend=backend)
        if deploy or kernel_size == 0:
            self.norm: nn.Module = nn.Identity()
        else:
            self.norm = nn.SyncBatchNorm(dim) if use_sync_bn else nn.BatchNorm2d(dim)
        self.se = SEBlock(dim, dim // 4)
        hidden = int(ffn_factor * dim)
        self.pwconv1 = nn.Sequential(ToChannelsLast(), nn.Linear(dim, hidden))
        self.act = nn.Sequential(nn.GELU(), GRN(hidden, use_bias=not deploy))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(hidden, dim), ToChannelsFirst())
        else:
            self.pwconv2 = nn.Sequential(nn.Linear(hidden, dim, bias=False), ToChannelsFirst(),
                                         nn.SyncBatchNorm(dim) if use_sync_bn else nn.BatchNorm2d(dim))
        use_layer_scale = not deploy and layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_layer_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        # Same function as se -> pwconv1 -> act -> pwconv2, with the SE and GRN per-sample channel
        # factors folded into the adjacent Linear weights where that saves a pass over the map.
        y = self.norm(self.dwconv(x))
        se_weights = self.se.channel_weights(y)  # (N, C)
        fc1, grn, fc2 = self.pwconv1[1], self.act[1], self.pwconv2[0]
        h = scaled_linear(y.permute(0, 2, 3, 1), se_weights, fc1.weight, fc1.bias)  # (N, H, W, 4C)
        h = gelu_inplace_inference(h)
        bias2 = fc2.bias
        if grn.beta is not None:
            grn_bias = fc2.weight @ grn.beta.reshape(-1)
            bias2 = grn_bias if bias2 is None else bias2 + grn_bias
        y = scaled_linear(h, grn.channel_scale(h), fc2.weight, bias2).permute(0, 3, 1, 2)  # (N, C, H, W)
        if len(self.pwconv2) > 2:
            y = self.pwconv2[2](y)
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return self.drop_path(y)

    def _plain_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch module by module, as in Fig. 3 (the path TorchScript compiles)."""
        y = self.pwconv2(self.act(self.pwconv1(self.se(self.norm(self.dwconv(x))))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return self.drop_path(y)

    def _channels_first_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch with every op on (N, C, H, W): the FFN's Linears as 1×1 convolutions, the SE and
        GRN factors as broadcast products. The ONNX export path: ONNX Runtime keeps such a chain in its blocked
        channels-first (NCHWc) layout, where the (N, H, W, C) form costs a transpose and a layout change at
        every block."""
        y = self.norm(self.dwconv(x))
        y = y * self.se.channel_weights(y)[:, :, None, None]
        fc1, grn, fc2 = self.pwconv1[1], self.act[1], self.pwconv2[0]
        h = F.gelu(F.conv2d(y, fc1.weight[:, :, None, None], fc1.bias))  # (N, 4C, H, W)
        h = h * grn.scale_from_norms(torch.linalg.vector_norm(h, ord=2, dim=(2, 3)))[:, :, None, None]
        if grn.beta is not None:
            h = h + grn.beta.view(1, -1, 1, 1)
        y = F.conv2d(h, fc2.weight[:, :, None, None], fc2.bias)  # (N, C, H, W)
        if len(self.pwconv2) > 2:
            y = self.pwconv2[2](y)
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return self.drop_path(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            return x + self._plain_residual(x)
        if torch.onnx.is_in_onnx_export():
            return x + self._channels_first_residual(x)
        if self.with_cp and x.requires_grad and torch.is_grad_enabled():
            return x + checkpoint(self._residual, x, use_reentrant=False)
        return x + self._residual(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place, exactly (no-op when already there)."""
        if self.deploy:
            return
        # Spatial part: dilated branches and every BatchNorm into one depthwise kernel with bias.
        conv = None
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
            conv = self.dwconv.lk_origin
        elif isinstance(self.dwconv, DepthwiseConv2d):
            conv = self.dwconv
        if conv is not None and not isinstance(self.norm, nn.Identity):
            kernel, bias = fuse_bn(conv.weight, self.norm, conv.bias)
            conv.weight.data.copy_(kernel)
            conv.bias = nn.Parameter(bias)
        self.norm = nn.Identity()
        # FFN tail: GRN bias, the BatchNorm after the FFN and the layer scale into the last Linear.
        linear, grn, bn = self.pwconv2[0], self.act[1], self.pwconv2[2]
        weight = linear.weight
        bias = linear.bias
        if grn.beta is not None:
            grn_bias = weight @ grn.beta.reshape(-1)
            bias = grn_bias if bias is None else bias + grn_bias
            grn.beta = None
        weight, bias = merge_bn_into_linear(weight, bias, bn)
        if self.gamma is not None:
            weight = weight * self.gamma[:, None]
            bias = bias * self.gamma
            self.gamma = None
        merged = nn.Linear(weight.shape[1], weight.shape[0], bias=True).to(device=weight.device, dtype=weight.dtype)
        merged.weight.data.copy_(weight)
        merged.bias.data.copy_(bias)
        self.pwconv2 = nn.Sequential(merged, ToChannelsFirst())
        self.deploy = True


def gelu_inplace_inference(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU; in place when nothing needs the input (inference): saves allocating and
    faulting in a 4C-wide map per block, ~10% of CPU inference time."""
    if torch.jit.is_scripting():  # TorchScript compiles only this branch (a scripted FX graph calls this function)
        return F.gelu(x)
    if x.requires_grad or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1), LayerNorm2d(dim // 2), nn.GELU(),
        nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1), LayerNorm2d(dim))


def _downsample(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1), LayerNorm2d(out_dim))


def _resolve_kernel_sizes(depths: Sequence[int], kernel_sizes: Any) -> tuple[tuple[int, ...], ...]:
    if kernel_sizes is None:
        return default_kernel_sizes(tuple(depths))
    if isinstance(kernel_sizes, int):  # one size for every block of stages 2-4, 3x3 in stage 1
        return ((3,) * depths[0],) + tuple((kernel_sizes,) * d for d in depths[1:])
    resolved = tuple(tuple(int(k) for k in stage) for stage in kernel_sizes)
    if len(resolved) != len(depths) or any(len(s) != d for s, d in zip(resolved, depths)):
        raise ValueError(f"kernel_sizes {resolved} does not match depths {tuple(depths)}: "
                         "give one tuple per stage with one size per block")
    return resolved


def _take_indices(n: int, indices: int | list[int] | None) -> list[int]:
    """timm's stage selection: None -> all n, an int k -> the last k, a sequence -> those (negative from the end)."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices} asks for the last {indices} of {n} stages: use 1..{n}")
        return list(range(n - indices, n))
    taken = [i + n if i < 0 else i for i in indices]
    if not taken or any(not 0 <= i < n for i in taken):
        raise ValueError(f"stage indices {indices} out of range for {n} stages: use 0..{n - 1} (or -{n}..-1)")
    return taken


def _global_pool(x: torch.Tensor, pool_type: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C): 'avg', 'max' or 'avgmax' (their mean)."""
    if pool_type == "avg":
        return x.mean(dim=(2, 3))
    if pool_type == "max":
        return x.amax(dim=(2, 3))
    return 0.5 * (x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)))


def _check_pool(global_pool: str) -> str:
    if global_pool not in POOL_TYPES:
        raise ValueError(f"global_pool={global_pool!r} is not supported; use one of {POOL_TYPES} "
                         "('' keeps the map: per-position outputs)")
    return global_pool


class UniRepLKNet(nn.Module):
    """UniRepLKNet: stem, 4 stages of LarK/SmaK blocks with 3 downsampling layers, pool + LayerNorm + Linear.

    (N, in_chans, H, W) -> (N, num_classes). ``kernel_sizes``: per stage, one size per block (``None``:
    the official default table for ``depths``; an int: that size in stages 2–4 and 3 in stage 1).
    Accepts the official constructor's arguments (``init_cfg`` is ignored: it only concerns mmcv) and timm's
    ``global_pool`` (one of ``POOL_TYPES``; '' gives per-position outputs (N, num_classes, h, w)) and
    ``drop_rate`` (dropout before the classifier).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depths: Sequence[int] = (3, 3, 27, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6, head_init_scale: float = 1.0,
                 kernel_sizes: Any = None, deploy: bool = False, with_cp: bool = False,
                 init_cfg: Any = None, attempt_use_lk_impl: bool = True, use_sync_bn: bool = False,
                 ffn_factor: int = 4, global_pool: str = "avg", drop_rate: float = 0.0, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"UniRepLKNet got unexpected arguments: {sorted(kwargs)}")
        depths, dims = tuple(depths), tuple(dims)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims need 4 entries each, got {depths} and {dims}")
        self.kernel_sizes = _resolve_kernel_sizes(depths, kernel_sizes)
        self.depths, self.dims = depths, dims
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = _check_pool(global_pool)
        self.deploy = deploy
        self.grad_checkpointing = with_cp

        self.downsample_layers = nn.ModuleList(
            [_stem(in_chans, dims[0])] + [_downsample(dims[i], dims[i + 1]) for i in range(3)])
        n_blocks = sum(depths)
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.stages = nn.ModuleList()
        offset = 0
        for i in range(4):
            self.stages.append(nn.Sequential(*[
                UniRepLKNetBlock(dims[i], self.kernel_sizes[i][j], drop_path=rates[offset + j],
                                 layer_scale_init_value=layer_scale_init_value, deploy=deploy,
                                 attempt_use_lk_impl=attempt_use_lk_impl, with_cp=with_cp,
                                 use_sync_bn=use_sync_bn, ffn_factor=ffn_factor)
                for j in range(depths[i])]))
            offset += depths[i]
        self.norm: nn.Module = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}") for i in range(4)]

        self.apply(_init_weights)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    # -- forward ---------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> last stage's map (N, dims[-1], H/32, W/32)."""
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, C, h, w) -> pooled, normalized features (N, C) if ``pre_logits`` else logits (N, num_classes);
        with ``global_pool=''`` the same per position: (N, C or num_classes, h, w)."""
        if self.global_pool == "":
            x = self.head_drop(self.norm(x.permute(0, 2, 3, 1)))  # (N, h, w, C)
            return (x if pre_logits else self.head(x)).permute(0, 3, 1, 2)
        x = self.head_drop(self.norm(_global_pool(x, self.global_pool)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (N, dims[i], H/2^(i+2), W/2^(i+2)) for the stages ``indices`` picks, timm's way.

        ``indices``: None (all), an int k (the last k) or a list / tuple of stage numbers (negative: from the end).
        Returns the list of maps if ``intermediates_only``, else (final map as from ``forward_features``, list);
        with ``stop_early`` the stages after the last pick are skipped (the "final" map is then that stage's).
        ``output_fmt``: 'NCHW' or 'NHWC'. ``norm`` changes nothing: UniRepLKNet has no norm on its maps
        (its final LayerNorm belongs to the head and follows the pooling).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt='{output_fmt}' is not supported; use 'NCHW' or 'NHWC'")
        take = _take_indices(len(self.stages), indices)
        last = max(take) if stop_early else len(self.stages) - 1
        intermediates = []
        for i, (downsample, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            if i <= last:  # (no break: TorchScript unrolls loops over modules)
                x = stage(downsample(x))
                if i in take:
                    intermediates.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (as for ``forward_intermediates``); returns those indices.

        With ``prune_head`` (or when stages go) the head goes too, its LayerNorm included (it is sized for the
        final features): the model then returns the last kept stage's map. ``prune_norm`` changes nothing
        (there is no norm on the maps).
        """
        take = _take_indices(len(self.stages), indices)
        keep = max(take) + 1
        pruned_end = keep < len(self.stages)
        self.downsample_layers = self.downsample_layers[:keep]
        self.stages = self.stages[:keep]
        if pruned_end:
            self.num_features = self.head_hidden_size = self.dims[keep - 1]
        if prune_head or pruned_end:
            self.norm = nn.Identity()
            self.reset_classifier(0, "")
        return take

    # -- re-parameterization -------------------------------------------------------------------------------
    def reparameterize(self) -> "UniRepLKNet":
        """Convert every block to its deploy form, in place; returns the model."""
        for module in list(self.modules()):
            if isinstance(module, UniRepLKNetBlock):
                module.reparameterize()
        self.deploy = True
        return self

    # -- timm conventions ----------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head Linear for ``num_classes`` (0: none, the model returns features), on the model's device
        and dtype; ``global_pool``: None keeps the current pooling, else one of ``POOL_TYPES``."""
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        ref = self.downsample_layers[0][0].weight
        head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 \
            else nn.Identity()
        _init_weights(head)
        self.head = head.train(self.training)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, UniRepLKNetBlock):
                module.with_cp = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of multi-dimensional parameters that are gains, not weights (GRN gamma/beta)."""
        return {name for name, _ in self.named_parameters() if ".act.1." in name}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay (timm's ``param_groups_layer_decay``)."""
        return dict(
            stem=r"^downsample_layers\.0\.",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^downsample_layers\.(\d+)\.", (-1,)),
                (r"^stages\.(\d+)\.(\d+)\.", None),
                (r"^norm\.", (99999,)),
            ],
        )


def _init_weights(module: nn.Module) -> None:
    """Official initialization: conv and linear weights truncated normal (std 0.02), biases zero."""
    if isinstance(module, (nn.Conv2d, nn.Linear, DepthwiseConv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
