"""The large-kernel depthwise convolution (paper §3.1.1, Guideline 1).

``dwconv2d`` is the one entry point; ``DepthwiseConv2d`` is the module the model uses. Backends "torch",
"cpu" and "triton" (imported lazily; triton is optional); "auto" chooses per device, dtype, layout and K
(ops/dispatch.py).
"""

from unireplknet.ops.dispatch import BACKENDS, ENV_VAR
from unireplknet.ops.dwconv import DepthwiseConv2d, dwconv2d

__all__ = ["BACKENDS", "ENV_VAR", "DepthwiseConv2d", "dwconv2d"]
