"""Building blocks of UniRepLKNet (paper §3.2) and the re-parameterization math."""

from unireplknet.layers.asymmetric_fusion import AsymmetricFusion, asymmetric_conv1d, asymmetric_conv2d
from unireplknet.layers.dilated_reparam import DILATED_BRANCHES, DilatedReparamBlock
from unireplknet.layers.drop import DropPath
from unireplknet.layers.grn import GRN
from unireplknet.layers.layout import ToChannelsFirst, ToChannelsLast
from unireplknet.layers.norm import LayerNorm2d
from unireplknet.layers.reparam import dilate_kernel, fuse_bn, merge_bn_into_linear, pad_kernel
from unireplknet.layers.scaled_linear import scaled_linear
from unireplknet.layers.se import SEBlock

__all__ = [
    "AsymmetricFusion",
    "DILATED_BRANCHES",
    "GRN",
    "DilatedReparamBlock",
    "DropPath",
    "LayerNorm2d",
    "SEBlock",
    "ToChannelsFirst",
    "ToChannelsLast",
    "asymmetric_conv1d",
    "asymmetric_conv2d",
    "dilate_kernel",
    "fuse_bn",
    "merge_bn_into_linear",
    "pad_kernel",
    "scaled_linear",
]
