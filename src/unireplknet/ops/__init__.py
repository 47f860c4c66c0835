"""The large-kernel depthwise convolution (paper §3.1.1, Guideline 1).

``dwconv2d`` is the one entry point; ``DepthwiseConv2d`` is the module the model uses.
"""

from unireplknet.ops.dwconv import DepthwiseConv2d, dwconv2d

__all__ = ["DepthwiseConv2d", "dwconv2d"]
