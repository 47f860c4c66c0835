"""Time-series embedder and forecasting head (paper §3.3, eq. 2; the Corrformer embedding).

A window ``(B, L, D)`` of ``D`` variables (plus ``M`` calendar features appended as extra columns) is
instance-normalized per variable, split into ``n`` nodes of ``D / n`` variables, and each node is projected
to a latent ``D′`` with value + temporal (calendar) + positional (sinusoidal over time) + node embeddings:
``(B, L, D) -> (B·n, L, D/n) -> (B·n, L, D′) -> (B·n, 1, H, W)`` with ``H = L, W = D′`` (so ``H·W = L·D′``).
The unchanged UniRepLKNet (``in_chans=1``, no classifier) encodes every node's map; the head pools each
node's last feature map to 2×2, concatenates the ``n`` nodes and maps them to a correction (in instance-
normalized units) of a per-variable linear forecast from the variable's own window (a DLinear-style
shortcut).
"""

from __future__ import annotations

import math

import torch
from torch import nn

EPS = 1e-5


def instance_norm(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample, per-variable normalization of (B, L, D) over time -> (normalized, mean, std), with
    mean/std of shape (B, 1, D); invert with ``x_n * std + mean``."""
    mean = x.mean(dim=1, keepdim=True)
    std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + eps)
    return (x - mean) / std, mean, std


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sine/cosine position codes (Transformer style)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, dtype=torch.float64)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out.float()


class CorrformerEmbedder(nn.Module):
    """(B, L, D + M) -> ((B·n, 1, L, D′) map, (normalized window (B, L, D), mean, std)) (paper eq. 2)."""

    def __init__(self, n_vars: int, n_nodes: int, seq_len: int, d_model: int = 64, n_time_feats: int = 4) -> None:
        super().__init__()
        if n_nodes < 1 or n_vars % n_nodes:
            raise ValueError(f"{n_vars} variables cannot be split into {n_nodes} nodes of equal size")
        self.n_vars, self.n_nodes, self.seq_len, self.d_model = n_vars, n_nodes, seq_len, d_model
        self.n_time_feats = n_time_feats
        self.value = nn.Linear(n_vars // n_nodes, d_model)
        self.temporal = nn.Linear(n_time_feats, d_model, bias=False) if n_time_feats else None
        self.node = nn.Parameter(torch.zeros(n_nodes, d_model))
        self.register_buffer("position", sinusoidal_positions(seq_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        b, length, _ = x.shape
        values, marks = x[..., : self.n_vars], x[..., self.n_vars:]
        z, mean, std = instance_norm(values)
        nodes = z.reshape(b, length, self.n_nodes, self.n_vars // self.n_nodes).permute(0, 2, 1, 3)
        e = self.value(nodes) + self.position[None, None, :length] + self.node[None, :, None]
        if self.temporal is not None:
            e = e + self.temporal(marks)[:, None]
        return e.reshape(b * self.n_nodes, 1, length, self.d_model), (z, mean, std)


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of adaptive average pooling along one axis (PyTorch's bins: floor(i·n_in/n_out) to
    ceil((i+1)·n_in/n_out)): pooling as a matrix product keeps the map's size a constant for ONNX export."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class ForecastHead(nn.Module):
    """Backbone features of every node (B·n, C, h, w) + context -> forecast (B, pred_len, D).

    ``y = linear(x) + deep(features) · std``: ``linear`` maps each variable's own window (as given, i.e. not
    instance-normalized; weights (D, L, P), bias (D, P)) to its next ``pred_len`` steps, a DLinear-style
    shortcut that starts as persistence (or at a least-squares fit, :meth:`init_linear`); ``deep`` (zero at
    init) reads the backbone's pooled 2×2 maps of all nodes and predicts the correction in the window's
    instance-normalized units.
    """

    def __init__(self, n_vars: int, n_nodes: int, seq_len: int, pred_len: int, feat_dim: int,
                 pool: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.n_vars, self.n_nodes, self.pred_len, self.pool = n_vars, n_nodes, pred_len, pool
        self.norm = nn.LayerNorm(feat_dim * pool * pool)
        self.drop = nn.Dropout(dropout)
        self.deep = nn.Linear(n_nodes * feat_dim * pool * pool, pred_len * n_vars)
        nn.init.zeros_(self.deep.weight)
        nn.init.zeros_(self.deep.bias)
        weight = torch.zeros(n_vars, seq_len, pred_len)
        weight[:, -1, :] = 1.0  # persistence
        self.linear_weight = nn.Parameter(weight)
        self.linear_bias = nn.Parameter(torch.zeros(n_vars, pred_len))

    def no_weight_decay(self) -> set[str]:
        """The linear shortcut is a forecast in its own right (started at least squares): no decay."""
        return {"linear_weight", "linear_bias"}

    @torch.no_grad()
    def init_linear(self, coef: torch.Tensor) -> None:
        """Set the shortcut from per-variable least-squares coefficients (D, L + 1, P) (last row: bias)."""
        self.linear_weight.copy_(coef[:, :-1])
        self.linear_bias.copy_(coef[:, -1])

    def forward(self, feats: torch.Tensor,
                context: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        z, mean, std = context
        b = z.shape[0]
        x = z * std + mean  # the window as given
        h, w = (int(v) for v in feats.shape[-2:])
        ph, pw = (adaptive_pool_matrix(n, self.pool).to(feats) for n in (h, w))
        f = torch.einsum("ph,nchw,qw->ncpq", ph, feats, pw).flatten(1)  # adaptive 2x2 average pool (B·n, C·p²)
        f = self.drop(self.norm(f)).reshape(b, -1)
        deep = self.deep(f).reshape(b, self.pred_len, self.n_vars)
        linear = torch.einsum("bld,dlp->bpd", x, self.linear_weight) + self.linear_bias.t()[None]
        return linear + deep * std
