"""Dilated Reparam Block (paper §3.2.2, Fig. 6, Guideline 7)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unireplknet.layers.reparam import dilate_kernel, fuse_bn, pad_kernel
from unireplknet.ops import DepthwiseConv2d, dwconv2d

#: Parallel dilated branches per large kernel size K: (kernel sizes k, dilation rates r), as in the
#: official checkpoints. Each satisfies (k - 1) * r + 1 <= K.
DILATED_BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    5: ((3, 3), (1, 2)),
    7: ((5, 3, 3), (1, 2, 3)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
}
#: Smallest kernel size whose UniRepLKNet block is a Dilated Reparam Block (official: 3 and 5 are plain convs).
MIN_DILATED_KERNEL = 7


def uses_dilated_reparam(kernel_size: int) -> bool:
    """Whether a UniRepLKNet block with this kernel size is built around a :class:`DilatedReparamBlock`."""
    return kernel_size >= MIN_DILATED_KERNEL


def _batch_norm(channels: int, use_sync_bn: bool) -> nn.Module:
    return nn.SyncBatchNorm(channels) if use_sync_bn else nn.BatchNorm2d(channels)


def _rename_keys(state: dict[str, Any], prefix: str, names: dict[str, str]) -> None:
    """Rename, in place and in order, the entries of ``state`` under ``prefix + old`` to ``prefix + new``."""
    for key in [k for k in state if k.startswith(prefix)]:
        module, _, leaf = key[len(prefix):].rpartition(".")
        if module in names:
            state[f"{prefix}{names[module]}.{leaf}"] = state.pop(key)


def _save_official_keys(module: DilatedReparamBlock, state: dict[str, Any], prefix: str, *_: Any) -> None:
    _rename_keys(state, prefix, module.branch_key_names())


def _load_official_keys(module: DilatedReparamBlock, state: dict[str, Any], prefix: str, *_: Any) -> None:
    _rename_keys(state, prefix, {v: k for k, v in module.branch_key_names().items()})


class DilatedDepthwiseConv2d(nn.Conv2d):
    """A branch's depthwise k×k conv with dilation r, 'same' zero padding, no bias: (N, C, H, W) -> same.

    An ``nn.Conv2d`` (same parameter, same state-dict key ``weight``) whose forward goes through ``dwconv2d``,
    so on CPU its backward is the fast one of ops/cpu.py (oneDNN's dilated depthwise backward is 9–17× slower
    than its forward); ``backend="torch"`` keeps plain F.conv2d.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, backend: str = "auto") -> None:
        super().__init__(channels, channels, kernel_size, padding=dilation * (kernel_size // 2),
                         dilation=dilation, groups=channels, bias=False)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch: the plain convolution
            return self._conv_forward(x, self.weight, self.bias)
        return dwconv2d(x, self.weight, None, backend=self.backend, dilation=self.dilation[0])


class DilatedReparamBlock(nn.Module):
    """A depthwise K×K conv + BN, plus parallel dilated depthwise k×k convs (dilation r) + BN, summed.

    (N, C, H, W) -> (N, C, H, W); ``backend`` is the depthwise convs' (ops/dispatch.py). ``reparameterize()``
    merges every branch and BatchNorm into one K×K depthwise conv with bias (``lk_origin``), exactly. The
    branches live in ``dil_branches`` (a ModuleList of (conv, BN) pairs, so TorchScript and FX can loop over
    them); state dicts keep the official key names
    ``lk_origin``, ``origin_bn``, ``dil_conv_k{k}_{r}``, ``dil_bn_k{k}_{r}`` (renamed by state-dict hooks).
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False, use_sync_bn: bool = False,
                 branch_kernel_sizes: tuple[int, ...] | None = None,
                 branch_dilations: tuple[int, ...] | None = None, backend: str = "auto") -> None:
        super().__init__()
        if branch_kernel_sizes is None and branch_dilations is None:
            if kernel_size not in DILATED_BRANCHES:
                raise ValueError(
                    f"no default dilated branches for kernel size {kernel_size} (known: "
                    f"{sorted(DILATED_BRANCHES)}); pass branch_kernel_sizes= and branch_dilations=")
            branch_kernel_sizes, branch_dilations = DILATED_BRANCHES[kernel_size]
        if branch_kernel_sizes is None or branch_dilations is None or \
                len(branch_kernel_sizes) != len(branch_dilations):
            raise ValueError("branch_kernel_sizes and branch_dilations must be given together, of equal length")
        for k, r in zip(branch_kernel_sizes, branch_dilations):
            if k % 2 != 1 or (k - 1) * r + 1 > kernel_size:
                raise ValueError(f"branch k={k}, r={r} does not fit in kernel size {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.branches = tuple(zip(branch_kernel_sizes, branch_dilations))
        self.deploy = deploy
        self.lk_origin = DepthwiseConv2d(channels, kernel_size, bias=deploy, backend=backend)
        self.origin_bn = nn.Identity() if deploy else _batch_norm(channels, use_sync_bn)
        self.dil_branches = nn.ModuleList() if deploy else nn.ModuleList(
            nn.Sequential(DilatedDepthwiseConv2d(channels, k, r, backend=backend), _batch_norm(channels, use_sync_bn))
            for k, r in self.branches)
        self.register_state_dict_post_hook(_save_official_keys)
        self.register_load_state_dict_pre_hook(_load_official_keys)

    def branch_key_names(self) -> dict[str, str]:
        """Module name in ``dil_branches`` -> official key name, e.g. ``'dil_branches.0.1' -> 'dil_bn_k5_1'``."""
        return {f"dil_branches.{i}.{j}": f"dil_{kind}_k{k}_{r}"
                for i, (k, r) in enumerate(self.branches) for j, kind in enumerate(("conv", "bn"))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.origin_bn(self.lk_origin(x))
        for branch in self.dil_branches:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def merged_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent K×K depthwise kernel (C, 1, K, K) and bias (C,)."""
        kernel, bias = fuse_bn(self.lk_origin.weight, self.origin_bn)
        for (conv, bn), (_, r) in zip(self.dil_branches, self.branches):
            branch_kernel, branch_bias = fuse_bn(conv.weight, bn)
            kernel = kernel + pad_kernel(dilate_kernel(branch_kernel, r), self.kernel_size)
            bias = bias + branch_bias
        return kernel, bias

    def reparameterize(self) -> None:
        """Switch to the deploy form in place (no-op when already there)."""
        if self.deploy:
            return
        kernel, bias = self.merged_kernel()
        merged = DepthwiseConv2d(self.channels, self.kernel_size, bias=True, backend=self.lk_origin.backend)
        merged.to(device=kernel.device, dtype=kernel.dtype)
        merged.weight.data.copy_(kernel)
        merged.bias.data.copy_(bias)
        self.lk_origin = merged
        self.origin_bn = nn.Identity()
        self.dil_branches = nn.ModuleList()
        self.deploy = True

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, branches={self.branches}, deploy={self.deploy}"
