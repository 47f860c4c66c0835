"""Forecasting pieces: the Corrformer-style embedding (H·W = L·D′), instance normalization, the head,
sliding windows and the chronological split, the baselines on series with known answers, per-variable
metrics on the original scale, and the CSV loader's user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unireplknet.data.timeseries import (
    RidgeBaseline,
    WindowDataset,
    chronological_split,
    load_csv_stations,
    per_variable_errors,
    persistence,
    seasonal_naive,
    time_features,
)
from unireplknet.errors import UserError
from unireplknet.modalities.timeseries import CorrformerEmbedder, ForecastHead, instance_norm
from unireplknet.models.multimodal import EmbedderModel
from unireplknet.models.unireplknet import UniRepLKNet

pd = pytest.importorskip("pandas", reason="forecast extra not installed: pip install 'unireplknet[forecast]'")


def test_corrformer_embedding_shapes() -> None:
    b, length, d, n, d_model = 2, 48, 12, 3, 32
    emb = CorrformerEmbedder(n_vars=d, n_nodes=n, seq_len=length, d_model=d_model)
    x = torch.randn(b, length, d + 4)
    z, (xn, mean, std) = emb(x)
    assert z.shape == (b * n, 1, length, d_model)  # paper eq. 2: (B·n, 1, H, W)
    assert z.shape[2] * z.shape[3] == length * d_model  # H·W = L·D′
    assert xn.shape == (b, length, d) and mean.shape == std.shape == (b, 1, d)
    # node k of sample i only sees its own D/n variables: perturbing node 1's variables leaves node 0 alone
    x2 = x.clone()
    x2[:, :, 4:8] += torch.randn(b, length, 4)
    z2, _ = emb(x2)
    assert torch.equal(z2.reshape(b, n, length, d_model)[:, 0], z.reshape(b, n, length, d_model)[:, 0])
    assert not torch.allclose(z2.reshape(b, n, length, d_model)[:, 1], z.reshape(b, n, length, d_model)[:, 1])
    with pytest.raises(ValueError, match="cannot be split"):
        CorrformerEmbedder(n_vars=10, n_nodes=3, seq_len=8)


def test_instance_norm_round_trip() -> None:
    x = torch.randn(4, 48, 6, dtype=torch.float64) * torch.tensor([1.0, 10, 100, 0.1, 5, 3]) + 7
    xn, mean, std = instance_norm(x)
    torch.testing.assert_close(xn * std + mean, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(xn.mean(dim=1), torch.zeros(4, 6, dtype=torch.float64), rtol=0, atol=1e-12)
    var = x.var(dim=1, unbiased=False)
    torch.testing.assert_close(xn.std(dim=1, unbiased=False), torch.sqrt(var / (var + 1e-5)),
                               rtol=0, atol=1e-12)  # unit std up to the eps = 1e-5 in the variance


def test_forecaster_starts_as_its_linear_shortcut_and_backbone_adds_to_it() -> None:
    torch.manual_seed(0)
    length, d, n, pred = 32, 6, 2, 8
    model = EmbedderModel(CorrformerEmbedder(d, n, length, d_model=32),
                          UniRepLKNet(in_chans=1, num_classes=0, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                                      kernel_sizes=5),
                          ForecastHead(d, n, length, pred, feat_dim=64)).eval()
    x = torch.randn(3, length, d + 4, dtype=torch.float64)
    model.double()
    torch.testing.assert_close(model(x), x[:, -1:, :d].expand(3, pred, d))  # persistence at init
    coef = torch.randn(d, length + 1, pred, dtype=torch.float64)
    model.head.init_linear(coef)
    expected = torch.einsum("bld,dlp->bpd", x[..., :d], coef[:, :-1]) + coef[:, -1].t()[None]
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    torch.nn.init.normal_(model.head.deep.weight, std=0.1)
    y = model(x)
    assert y.shape == (3, pred, d) and not torch.allclose(y, expected)


def test_chronological_split_and_windows() -> None:
    t, seq, pred = 200, 10, 5
    r = chronological_split(t, seq, pred, (0.7, 0.1, 0.2))
    assert r == {"train": (0, 126), "val": (130, 146), "test": (150, 186)}
    # targets of a split lie inside its own time range and the ranges follow each other
    assert r["train"][1] - 1 + seq + pred <= 140 and r["val"][0] + seq >= 140
    assert r["val"][1] - 1 + seq + pred <= 160 and r["test"][0] + seq >= 160
    assert r["test"][1] - 1 + seq + pred == t
    values = np.arange(t * 2, dtype=np.float64).reshape(t, 2)
    marks = np.zeros((t, 4))
    ds = WindowDataset(values, marks, seq, pred, *r["val"])
    assert len(ds) == 16
    x, y = ds[3]
    assert x.shape == (seq, 6) and y.shape == (pred, 2)
    np.testing.assert_array_equal(x[:, :2].numpy(), values[133:143])
    np.testing.assert_array_equal(y.numpy(), values[143:148])
    xa, ya = ds.arrays()
    np.testing.assert_array_equal(xa[3], values[133:143])
    np.testing.assert_array_equal(ya[3], values[143:148])
    strided = WindowDataset(values, marks, seq, pred, *r["val"], stride=4)
    assert len(strided) == 4 and torch.equal(strided[1][0], ds[4][0])
    np.testing.assert_array_equal(strided.arrays()[1], ya[::4])
    with pytest.raises(UserError, match="too short"):
        chronological_split(30, 10, 5)


def test_baselines_on_series_with_known_answers() -> None:
    n, seq, pred = 50, 48, 24
    const = np.full((n, seq + pred, 2), 3.5)
    assert np.array_equal(persistence(const[:, :seq], pred), const[:, seq:])
    t = np.arange(400)
    periodic = np.stack([np.sin(2 * np.pi * t / 24) + 0.3 * np.cos(2 * np.pi * t / 8), (t % 24) ** 2], axis=1)
    idx = np.arange(0, 400 - seq - pred)[:, None]
    x = periodic[idx + np.arange(seq)]
    y = periodic[idx + seq + np.arange(pred)]
    np.testing.assert_allclose(seasonal_naive(x, pred, 24), y, rtol=0, atol=1e-12)
    assert np.abs(persistence(x, pred) - y).max() > 0.5  # persistence is not exact there
    trend = 0.5 * t[:, None] + np.array([1.0, -2.0])  # linear series: ridge (tiny alpha) extrapolates it
    xt, yt = trend[idx + np.arange(seq)], trend[idx + seq + np.arange(pred)]
    ridge = RidgeBaseline(alpha=1e-6).fit(xt, yt)
    np.testing.assert_allclose(ridge.predict(xt), yt, rtol=0, atol=1e-4)


def test_per_variable_errors_on_original_scale() -> None:
    pred = np.zeros((2, 3, 4))
    target = np.ones((2, 3, 4))
    target[..., 1] = 2.0
    cols = ["a/temp", "a/wind", "b/temp", "b/wind"]
    scale = np.array([10.0, 1.0, 10.0, 1.0])
    out = per_variable_errors(pred, target, scale, cols, ["temp", "wind"])
    assert out["temp"] == {"mse": 100.0, "mae": 10.0}
    assert out["wind"]["mse"] == pytest.approx((4 + 1) / 2) and out["wind"]["mae"] == pytest.approx(1.5)


def test_time_features_range() -> None:
    ts = pd.date_range("2001-01-01", periods=24 * 400, freq="h").to_numpy()
    f = time_features(ts)
    assert f.shape == (len(ts), 4) and f.min() >= -0.5 and f.max() <= 0.5 + 1e-6
    assert f[0, 0] == -0.5 and f[23, 0] == 0.5


def _csv(path: Path, n: int = 100, nan_at: int | None = None, cols: tuple[str, ...] = ("temp", "wind")) -> None:
    df = pd.DataFrame({"timestamp": pd.date_range("2020-01-01", periods=n, freq="h")})
    for i, c in enumerate(cols):
        df[c] = np.sin(np.arange(n) / 5 + i)
    if nan_at is not None:
        df.loc[nan_at, cols[0]] = np.nan
    df.to_csv(path, index=False)


def test_csv_stations_align_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "stations"
    root.mkdir()
    _csv(root / "north.csv", 100)
    _csv(root / "south.csv", 90)
    s = load_csv_stations(root, "timestamp", ["temp", "wind"])
    assert s.values.shape == (90, 4) and s.stations == ["north", "south"]
    assert s.columns == ["north/temp", "north/wind", "south/temp", "south/wind"]
    with pytest.raises(UserError, match="no column"):
        load_csv_stations(root, "timestamp", ["temp", "pressure"])
    with pytest.raises(UserError, match="no column"):
        load_csv_stations(root, "time", ["temp"])
    _csv(root / "west.csv", 100, nan_at=7)
    with pytest.raises(UserError, match="missing or non-numeric"):
        load_csv_stations(root, "timestamp", ["temp", "wind"])
    with pytest.raises(UserError, match="no .csv files"):
        (tmp_path / "empty").mkdir()
        load_csv_stations(tmp_path / "empty", "timestamp", ["temp"])


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (7, 2), (6, 6)])
def test_head_pooling_matrix_is_adaptive_average_pooling(h: int, w: int) -> None:
    from unireplknet.modalities.timeseries import adaptive_pool_matrix

    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    got = torch.einsum("ph,nchw,qw->ncpq", adaptive_pool_matrix(h, 2), x, adaptive_pool_matrix(w, 2))
    torch.testing.assert_close(got, torch.nn.functional.adaptive_avg_pool2d(x, 2), rtol=0, atol=1e-14)
