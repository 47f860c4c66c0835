"""Asymmetric large-kernel fusion (paper §3.4) vs cross-attention with the same parameter budget.

Two measurements (docs/modalities.md, "Fusion vs cross-attention"):

1. **Accuracy** on a task that needs both modalities: an image of a handwritten digit a (scikit-learn's
   8×8 digits, held-out digits at test time) and a noisy series whose dominant frequency encodes a digit b;
   the label is whether a = b (half the pairs), so neither input alone is better than chance (50%).
   Both models share the encoders and the head; only the fusion layer differs (equal parameter counts).
2. **Cost as the sequence grows**: one fusion layer, forward + backward, X and Y of length L (B=8, D=64):
   latency (median of repeats) and the bytes autograd keeps for the backward pass (saved tensors, a
   deterministic measure of activation memory).

    python benchmarks/fusion_vs_attention.py                      # both parts (~5 min on 2 CPU cores)
    python benchmarks/fusion_vs_attention.py --part cost --lengths 256 1024 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unireplknet.layers.asymmetric_fusion import AsymmetricFusion


class CrossAttentionFusion(nn.Module):
    """X attends to Y: ``X + W_o · softmax((W_q X)(W_k Y)ᵀ / √(D/h)) (W_v Y)``, h heads: 4·D·(D+1) params."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x, y, y, need_weights=False)[0]


class AsymFusionBlock(nn.Module):
    """``AsymmetricFusion`` (3·D·(D+1) params) + a D×D mixing Linear: 4·D·(D+1), the budget of cross-attention."""

    def __init__(self, dim: int, method: str = "auto") -> None:
        super().__init__()
        self.fuse = AsymmetricFusion(dim, method=method)
        self.mix = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.fuse(x, y)
        return z + self.mix(F.gelu(z))


def make_fusion(kind: str, dim: int) -> nn.Module:
    return AsymFusionBlock(dim) if kind == "asymmetric" else CrossAttentionFusion(dim)


# ------------------------------------------------------------------------------------------------- task
SERIES_LEN = 64


def make_data(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (n, 1, 8, 8), series (n, SERIES_LEN, 1), labels (n,)): label 1 when the image's digit a equals
    the series' digit b (half the pairs), else 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    tr, te = train_test_split(np.arange(len(d.target)), test_size=0.25, random_state=0, stratify=d.target)
    pool = tr if split == "train" else te
    rng = np.random.default_rng(seed)
    idx = rng.choice(pool, n)
    a = d.target[idx]
    match = rng.random(n) < 0.5
    b = np.where(match, a, (a + rng.integers(1, 10, n)) % 10)  # half the pairs match, the rest differ
    t = np.arange(SERIES_LEN)[None]
    freq = (b[:, None] + 1) * 2 * np.pi / SERIES_LEN * 2.0  # 2 .. 20 cycles over the series
    series = np.sin(freq * t + rng.uniform(0, 2 * np.pi, (n, 1))) + 0.5 * rng.standard_normal((n, SERIES_LEN))
    images = d.images[idx] / 16.0
    return (torch.tensor(images, dtype=torch.float32)[:, None], torch.tensor(series, dtype=torch.float32)[..., None],
            torch.tensor(match.astype(np.int64)))


class TwoModalityNet(nn.Module):
    """Image encoder -> X (64 tokens, 8×8), series encoder -> Y (64 tokens); fusion; mean-pool; MLP head."""

    def __init__(self, kind: str, dim: int = 32) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.Conv2d(1, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1),
                                 nn.GELU())
        self.ser = nn.Sequential(nn.Conv1d(1, dim, 7, padding=3), nn.GELU(), nn.Conv1d(dim, dim, 7, padding=3),
                                 nn.GELU())
        self.norm_x, self.norm_y = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fusion = make_fusion(kind, dim)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, 2))

    def forward(self, image: torch.Tensor, series: torch.Tensor) -> torch.Tensor:
        x = self.norm_x(self.img(image).flatten(2).transpose(1, 2))  # (B, 64, D)
        y = self.norm_y(self.ser(series.transpose(1, 2)).transpose(1, 2))  # (B, SERIES_LEN, D)
        return self.head(self.fusion(x, y).mean(1))


def accuracy_part(steps: int, seeds: list[int],
                  kinds: tuple[str, ...] = ("asymmetric", "cross-attention")) -> list[dict]:
    train = make_data("train", 20000, 0)
    test = make_data("test", 4000, 1)
    rows = []
    for kind in kinds:
        for seed in seeds:
            torch.manual_seed(seed)
            model = TwoModalityNet(kind)
            n_fusion = sum(p.numel() for p in model.fusion.parameters())
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
            g = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            for _ in range(steps):
                i = torch.randint(0, len(train[2]), (128,), generator=g)
                loss = F.cross_entropy(model(train[0][i], train[1][i]), train[2][i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            train_s = time.perf_counter() - t0
            model.eval()
            with torch.no_grad():
                pred = torch.cat([model(test[0][j:j + 500], test[1][j:j + 500]).argmax(1)
                                  for j in range(0, len(test[2]), 500)])
            acc = 100.0 * float((pred == test[2]).float().mean())
            rows.append({"fusion": kind, "seed": seed, "fusion_params": n_fusion, "test_acc": round(acc, 2),
                         "train_s": round(train_s, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def cost_part(lengths: list[int], dim: int = 64, batch: int = 8, reps: int = 3,
              max_conv_len: int = 1024) -> list[dict]:
    rows = []
    for L in lengths:
        for kind, method in (("asymmetric (conv)", "conv"), ("asymmetric (fft)", "fft"),
                             ("cross-attention", None)):
            if method == "conv" and max_conv_len < L:  # O(L²·D) direct sums: "auto" uses FFT there anyway
                continue
            torch.manual_seed(0)
            layer = AsymFusionBlock(dim, method=method) if method else CrossAttentionFusion(dim)
            x = torch.randn(batch, L, dim, requires_grad=True)
            y = torch.randn(batch, L, dim, requires_grad=True)
            times = []
            mem = 0
            warm = 1 if L <= 1024 else 0
            for r in range(reps + warm):
                t0 = time.perf_counter()
                mem, out = saved_bytes(lambda layer=layer, x=x, y=y: layer(x, y))
                out.sum().backward()
                if r >= warm:  # the first run warms up (short sequences only)
                    times.append(time.perf_counter() - t0)
                x.grad = y.grad = None
            rows.append({"L": L, "fusion": kind, "params": sum(p.numel() for p in layer.parameters()),
                         "fwd_bwd_ms": round(1000 * statistics.median(times), 2),
                         "saved_MiB": round(mem / 2**20, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "accuracy", "cost"), default="all")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--fusions", nargs="+", default=["asymmetric", "cross-attention"],
                   choices=["asymmetric", "cross-attention"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    if args.part in ("all", "accuracy"):
        out["accuracy"] = accuracy_part(args.steps, args.seeds, tuple(args.fusions))
    if args.part in ("all", "cost"):
        out["cost"] = cost_part(args.lengths, reps=args.reps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
