"""unireplknet: UniRepLKNet large-kernel ConvNets (exact models), a fast large-kernel depthwise conv,
and one pipeline for every modality.

``import unireplknet`` needs torch alone; when timm is installed the variants are also registered with
timm, and when open_clip is too, as OpenCLIP image towers (``UniRepLKNet-A`` … ``-H``) the moment open_clip is
imported (importing unireplknet does not import open_clip); set ``UNIREPLKNET_NO_TIMM=1`` to skip both.
"""

import importlib.util
import os

from unireplknet.models import (
    UniRepLKNet,
    UniRepLKNetFeatures,
    build_model_from_checkpoint,
    create_model,
    list_models,
    load_checkpoint,
    reparameterize,
)

__version__ = "0.1.0"
__all__ = [
    "UniRepLKNet",
    "UniRepLKNetFeatures",
    "build_model_from_checkpoint",
    "create_model",
    "list_models",
    "load_checkpoint",
    "reparameterize",
]


def _register_open_clip() -> None:
    from unireplknet.models.clip import register_open_clip

    register_open_clip()


if os.environ.get("UNIREPLKNET_NO_TIMM") != "1" and importlib.util.find_spec("timm") is not None:
    try:
        from unireplknet.models import timm_registry  # noqa: F401  (registers the variants with timm)

        if importlib.util.find_spec("open_clip") is not None:  # OpenCLIP configs UniRepLKNet-A…H (towers via timm)
            from unireplknet.utils.after_import import after_import

            after_import("open_clip", _register_open_clip)
    except ImportError as err:  # a broken timm / open_clip install must not break the torch-only library
        import logging

        logging.getLogger(__name__).warning("timm or open_clip is installed but could not be imported (%s): the "
                                            "variants are not registered with it", err)
