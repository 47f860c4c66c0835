"""Models: the UniRepLKNet backbone, variants, checkpoints, pretrained weights, features."""

from unireplknet.models.checkpoint import build_model_from_checkpoint, load_checkpoint, read_checkpoint
from unireplknet.models.features import UniRepLKNetFeatures
from unireplknet.models.loading import LoadedModel, load_model
from unireplknet.models.registry import create_model, list_models, reparameterize
from unireplknet.models.unireplknet import UniRepLKNet, UniRepLKNetBlock
from unireplknet.models.variants import DEFAULT_KERNEL_SIZES, VARIANTS, architecture

__all__ = [
    "DEFAULT_KERNEL_SIZES",
    "LoadedModel",
    "VARIANTS",
    "architecture",
    "UniRepLKNet",
    "UniRepLKNetBlock",
    "UniRepLKNetFeatures",
    "build_model_from_checkpoint",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "reparameterize",
]
