"""Test-time inference: whole (pad + crop), sliding window (MMSeg's windows, averaged), multi-scale + flip."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import rel_error
from unireplknet.models.seg_inference import (
    MS_RATIOS,
    predict_slide,
    predict_whole,
    rescale_size,
    segment,
    sliding_windows,
)
from unireplknet.models.segmentation import UPerNet


class ShapeRecorder(nn.Module):
    """A pointwise 'segmenter' (1×1 conv) that records the input sizes it sees."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 1).double()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


def test_rescale_size_fits_long_and_short_edge_bounds_keeping_the_ratio():
    assert rescale_size((375, 500), (2048, 512)) == (512, 683)
    assert rescale_size((512, 4000), (2048, 512)) == (262, 2048)
    assert rescale_size((640, 480), (2048, 512)) == (683, 512)


def test_sliding_windows_follow_mmseg_grid_and_cover_every_pixel():
    assert sliding_windows((512, 683), (512, 512), (341, 341)) == [(0, 0), (0, 171)]
    assert sliding_windows((300, 700), (512, 512), (341, 341)) == [(0, 0), (0, 188)]
    for hw in ((77, 50), (129, 257), (31, 300)):
        cover = torch.zeros(hw)
        for y, x in sliding_windows(hw, (40, 64), (27, 41)):
            cover[y:y + 40, x:x + 64] += 1
        assert cover.min() >= 1


def test_whole_pads_to_the_divisor_and_crops_back():
    model = ShapeRecorder()
    x = torch.randn(2, 3, 45, 70, dtype=torch.float64)
    out = predict_whole(model, x, size_divisor=32)
    assert model.sizes == [(64, 96)]
    assert out.shape == (2, 4, 45, 70)
    assert torch.allclose(out, model.conv(x))


def test_slide_averages_windows_exactly_for_a_pointwise_model():
    # A 1×1 model gives every window the same logits the whole image gets there: any averaging error shows.
    model = ShapeRecorder()
    x = torch.randn(1, 3, 77, 130, dtype=torch.float64)
    out = predict_slide(model, x, crop=(40, 64), stride=(27, 41))
    assert len(model.sizes) == len(sliding_windows((77, 130), (40, 64), (27, 41))) > 4
    assert rel_error(out, model.conv(x)) < 1e-12


def test_slide_equals_whole_when_one_window_covers_the_image():
    torch.manual_seed(1)
    model = UPerNet(num_classes=5, channels=16, aux_channels=0, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                    kernel_sizes=((3,), (7,), (7,), (5,))).double().eval()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        whole = segment(model, x, scale=None, mode="whole")
        slide = segment(model, x, scale=None, mode="slide", crop=128, stride=85)
    assert rel_error(slide, whole) < 1e-12
    assert torch.allclose(whole.sum(1), torch.ones(2, 64, 96, dtype=torch.float64))


def test_flip_averages_the_flipped_pass_and_is_a_no_op_for_a_mirror_symmetric_model():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 5, padding=2).double()
    x = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = (conv(x).softmax(1) + conv(x.flip(-1)).softmax(1).flip(-1)) / 2
        assert rel_error(segment(conv, x, scale=None, flip=True, size_divisor=None), expected) < 1e-12
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
        plain = segment(conv, x, scale=None, size_divisor=None)
        flipped = segment(conv, x, scale=None, flip=True, size_divisor=None)
    assert rel_error(flipped, plain) < 1e-12


def test_multi_scale_flip_runs_every_ratio_twice_and_returns_probabilities_at_the_input_size():
    model = ShapeRecorder(num_classes=3)
    x = torch.randn(1, 3, 60, 80, dtype=torch.float64)
    probs = segment(model, x, scale=(160, 40), ratios=MS_RATIOS, flip=True, size_divisor=None)
    assert probs.shape == (1, 3, 60, 80)
    assert torch.allclose(probs.sum(1), torch.ones(1, 60, 80, dtype=torch.float64))
    expected = [rescale_size((60, 80), (160 * r, 40 * r)) for r in MS_RATIOS]
    assert model.sizes == [s for s in expected for _ in range(2)]
