"""Flax linen models, one per file: ViT and text towers, a small CNN, the dual encoder."""

from jaxalign.models.cnn import ConvNet
from jaxalign.models.dual_encoder import PRESETS, DualEncoder, build, l2_normalize
from jaxalign.models.text import TextTransformer, check_token_ids
from jaxalign.models.vit import ViT, decode_variant

__all__ = [
    "PRESETS",
    "ConvNet",
    "DualEncoder",
    "TextTransformer",
    "ViT",
    "build",
    "check_token_ids",
    "decode_variant",
    "l2_normalize",
]
