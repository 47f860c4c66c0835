"""A linear layer whose input is first scaled per sample and channel, with the scale folded where cheaper."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_linear(x: torch.Tensor, scale: torch.Tensor | None, weight: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x * scale[:, None, None, :], weight, bias)`` for x (N, H, W, C_in), scale (N, C_in).

    When the map has more positions than the layer has outputs (H·W > C_out), the scale goes into a
    per-sample weight (N, C_out, C_in) and one batched product replaces a full pass over x — the same
    arithmetic, reordered. (SE before the FFN, GRN inside it: paper §3.2, Fig. 3.)
    """
    if scale is None:
        return F.linear(x, weight, bias)
    n, h, w, c_in = x.shape
    c_out = weight.shape[0]
    if h * w <= c_out:
        return F.linear(x * scale[:, None, None, :], weight, bias)
    per_sample = weight.unsqueeze(0) * scale.unsqueeze(1)  # (N, C_out, C_in)
    flat = x.reshape(n, h * w, c_in)
    if bias is None:
        out = torch.bmm(flat, per_sample.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.view(1, 1, c_out), flat, per_sample.transpose(1, 2))
    return out.view(n, h, w, c_out)
