"""Parameters and MACs of the UPerNet segmenters next to the paper's Table 7.

What Table 7 counts (checked here to within 0.1%): the deploy-form (re-parameterized) backbone plus the
UPerNet decode head, without the auxiliary FCN head (a training-only branch), for 150 classes; FLOPs are
multiply-accumulates of one 512×2048 image (640×2560 for the ImageNet-22K rows, crop 640).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from unireplknet.analysis.complexity import count_macs, count_parameters

#: Table 7 rows: (label, model, crop, params in M, GFLOPs).
PAPER_TABLE7: tuple[tuple[str, str, int, float, float], ...] = (
    ("UniRepLKNet-T", "upernet_unireplknet_t", 512, 61, 946),
    ("UniRepLKNet-S", "upernet_unireplknet_s", 512, 86, 1036),
    ("UniRepLKNet-S‡", "upernet_unireplknet_s", 640, 86, 1618),
    ("UniRepLKNet-B‡", "upernet_unireplknet_b", 640, 130, 1850),
    ("UniRepLKNet-L‡", "upernet_unireplknet_l", 640, 254, 2507),
    ("UniRepLKNet-XL‡", "upernet_unireplknet_xl", 640, 425, 3420),
)


@dataclass
class SegmenterRow:
    """One row: counts as the paper makes them, plus the training-form and auxiliary-head extras."""

    label: str
    model: str
    input_hw: tuple[int, int]
    params: int  # deploy backbone + decode head (what Table 7 counts)
    params_train_with_aux: int  # what training optimizes: training-form backbone + both heads
    gmacs: float  # deploy backbone + decode head at input_hw (what Table 7 counts)
    paper_params_m: float
    paper_gflops: float

    def as_dict(self) -> dict:
        return asdict(self)


def segmenter_table(num_classes: int = 150) -> list[SegmenterRow]:
    """The Table 7 rows for T/S/S‡/B‡/L‡/XL‡, counted on the meta device (instant, no memory)."""
    from unireplknet.models.segmentation import MODELS

    rows = []
    for label, name, crop, paper_params, paper_gflops in PAPER_TABLE7:
        with torch.device("meta"):
            train = MODELS[name](num_classes=num_classes)
            deploy = MODELS[name](num_classes=num_classes, aux_channels=0, deploy=True).eval()
        hw = (crop, 4 * crop)
        rows.append(SegmenterRow(label, name, hw, count_parameters(deploy), count_parameters(train),
                                 count_macs(deploy, (3, *hw)) / 1e9, paper_params, paper_gflops))
    return rows

