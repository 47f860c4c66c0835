"""analysis.erf (paper Fig. 2 protocol) and analysis.throughput on maps and models with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unireplknet.analysis.erf import area_ratios, compute_erf, log_scale, plot_erfs, random_images
from unireplknet.analysis.throughput import measure_throughput
from unireplknet.models.unireplknet import UniRepLKNet


def test_area_ratios_of_known_maps():
    uniform = np.ones((10, 10))  # centered squares 1, 3, 5, 7, 9 (clipped to 10) wide
    assert area_ratios(uniform) == {0.2: 0.25, 0.3: 0.49, 0.5: 0.81, 0.99: 1.0}
    point = np.zeros((21, 21))
    point[10, 10] = 3.0  # everything in the central pixel
    assert set(area_ratios(point).values()) == {1 / 441}
    ring = np.zeros((21, 21))
    ring[5, 5:16] = 1.0  # on the border of the half-width-5 square: nothing inside covers any of it
    assert area_ratios(ring, (0.5,)) == {0.5: 121 / 441}
    with pytest.raises(ValueError):
        area_ratios(np.zeros((5, 5)))


def test_log_scale_is_log10_plus_one():
    np.testing.assert_allclose(log_scale(np.array([0.0, 9.0, 99.0])), [0.0, 1.0, 2.0])


def test_compute_erf_of_one_conv_is_its_kernel_footprint():
    conv = nn.Conv2d(2, 3, kernel_size=5, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    erf = compute_erf(conv, random_images(3, 15, in_chans=2), feature_fn=conv)
    assert erf.shape == (15, 15)
    nonzero = np.argwhere(erf > 0)
    assert nonzero.min(0).tolist() == [5, 5] and nonzero.max(0).tolist() == [9, 9]  # 5x5 around (7, 7)
    # |d (sum over 3 output channels) / d x|, summed over 2 input channels
    np.testing.assert_allclose(erf[5:10, 5:10], 3 * 2 * np.ones((5, 5)))
    assert conv.weight.grad is None and conv.weight.requires_grad  # parameters untouched


def _tiny(kernel: int) -> UniRepLKNet:
    torch.manual_seed(0)
    return UniRepLKNet(num_classes=2, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), kernel_sizes=kernel,
                       layer_scale_init_value=1.0)


def test_large_kernel_has_larger_erf(tmp_path):
    ratios, maps = {}, {}
    for k in (13, 3):
        maps[k] = log_scale(compute_erf(_tiny(k), random_images(2, 256, seed=1)))
        ratios[k] = area_ratios(maps[k])
    for t in (0.2, 0.3, 0.5, 0.99):
        assert ratios[13][t] > 2 * ratios[3][t], (t, ratios)
    png = plot_erfs({"K=13": maps[13], "K=3": maps[3]}, tmp_path / "erf.png", ratios={"K=13": ratios[13]})
    from PIL import Image

    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > img.height  # two panels side by side


def test_measure_throughput_reports_consistent_numbers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
    r = measure_throughput(model, batch_size=4, img_size=(16, 24), warmup=1, iters=3)
    assert r["images_per_s"] == pytest.approx(4 / (r["latency_ms_median"] / 1e3))
    assert r["latency_ms_min"] <= r["latency_ms_median"] and r["img_size"] == [16, 24]
    assert r["dtype"] == "float32" and r["iters"] == 3 and not model.training
    with pytest.raises(ValueError):
        measure_throughput(model, batch_size=0, img_size=16)
