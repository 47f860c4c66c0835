"""unireplknet: UniRepLKNet large-kernel ConvNets (exact models), a fast large-kernel depthwise conv,
and one pipeline for every modality."""

__version__ = "0.1.0"
