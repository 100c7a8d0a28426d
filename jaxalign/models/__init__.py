"""Flax linen models, one per file: ViT and text towers, a small CNN, the dual encoder, the
image classifier, the domain-adaptation network, a ResNet with global batch norm, SimCLR's
network, a convolutional autoencoder, a masked autoencoder and a
masked language model."""

from jaxalign.models.adapter import AdaptationNet, DomainDiscriminator
from jaxalign.models.autoencoder import ConvAutoencoder
from jaxalign.models.classifier import Classifier
from jaxalign.models.cnn import ConvNet
from jaxalign.models.dual_encoder import (
    PRESETS,
    TOWER_PRESETS,
    DualEncoder,
    build,
    build_image_tower,
    image_stride,
    l2_normalize,
)
from jaxalign.models.mae import MaskedAutoencoder
from jaxalign.models.mlm import MaskedLanguageModel
from jaxalign.models.resnet import ResNet
from jaxalign.models.simclr import ProjectionHead, SimCLRModel
from jaxalign.models.text import TextTransformer, check_token_ids
from jaxalign.models.vit import ViT, decode_variant

__all__ = [
    "PRESETS",
    "TOWER_PRESETS",
    "AdaptationNet",
    "Classifier",
    "ConvAutoencoder",
    "ConvNet",
    "DomainDiscriminator",
    "DualEncoder",
    "MaskedAutoencoder",
    "MaskedLanguageModel",
    "ProjectionHead",
    "ResNet",
    "SimCLRModel",
    "TextTransformer",
    "ViT",
    "build",
    "build_image_tower",
    "check_token_ids",
    "decode_variant",
    "image_stride",
    "l2_normalize",
]
