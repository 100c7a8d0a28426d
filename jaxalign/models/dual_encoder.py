"""Dual encoder (CLIP / SigLIP): an image tower and a text tower projected to one embedding
space, L2-normalised, with a learnable temperature (and, for SigLIP, a bias).

``encode_image``: ``[batch, H, W, C] -> [batch, embed_dim]``; ``encode_text``:
``[batch, length] -> [batch, embed_dim]``; ``__call__`` does both. Each returns its output and a
dict of named intermediates: ``img/patches``, ``img/encoded``, ``img/pre_logits`` (pooled,
before the projection), ``img/projected`` (after it, before normalising: what Hugging Face's
``get_image_features`` returns), and the same with ``txt/``.

Sizes: ``PRESETS`` and ``build(preset, **overrides)``. The image tower is a ViT, or for
``tiny-cnn`` (the CPU demo) a small ``ConvNet``, which learns the shapes of small drawn objects
in far fewer steps than a ViT of the same cost. ``build_image_tower`` also builds the
image-only ``TOWER_PRESETS`` (ResNets, ``jaxalign.models.resnet.PRESETS``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.cnn import ConvNet
from jaxalign.models.layers import dense
from jaxalign.models.resnet import PRESETS as RESNET_PRESETS
from jaxalign.models.resnet import ResNet
from jaxalign.models.text import TextTransformer
from jaxalign.models.vit import ViT, decode_variant

CLIP_LOGIT_SCALE = math.log(1 / 0.07)
SIGLIP_LOGIT_SCALE, SIGLIP_LOGIT_BIAS = math.log(10.0), -10.0


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``[batch, dim]`` -> unit rows, computed in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class DualEncoder(nn.Module):
    """Two towers, linear projections (no bias, as CLIP) to ``embed_dim``, L2 normalisation.

    ``logit_bias_init=None`` (CLIP) has no bias parameter; SigLIP uses scale log(10), bias -10.
    """

    image_tower: nn.Module
    text_tower: nn.Module
    embed_dim: int = 512
    logit_scale_init: float = CLIP_LOGIT_SCALE
    logit_bias_init: float | None = None

    def setup(self):
        self.image_projection = dense(
            self.embed_dim, ("embed", "mlp"), use_bias=False, name="image_projection"
        )
        self.text_projection = dense(
            self.embed_dim, ("embed", "mlp"), use_bias=False, name="text_projection"
        )
        self.logit_scale = self.param(
            "logit_scale",
            nn.with_logical_partitioning(nn.initializers.constant(self.logit_scale_init), ()),
            (),
        )
        if self.logit_bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias",
                nn.with_logical_partitioning(nn.initializers.constant(self.logit_bias_init), ()),
                (),
            )

    def encode_image(
        self, images: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``[batch, H, W, C]`` float -> ``[batch, embed_dim]`` unit rows; batch over
        (``data``, ``fsdp``)."""
        chex.assert_rank(images, 4)
        pooled, out = self.image_tower(images, deterministic=deterministic)
        projected = self.image_projection(pooled)
        out = {f"img/{k}": v for k, v in out.items()}
        out["img/pre_logits"] = pooled
        out["img/projected"] = projected
        return l2_normalize(projected), out

    def encode_text(
        self,
        ids: jax.Array,
        mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``[batch, length]`` int ids (``mask``: 1 for real tokens) -> ``[batch, embed_dim]``
        unit rows; batch over (``data``, ``fsdp``)."""
        pooled, out = self.text_tower(ids, mask, deterministic=deterministic)
        projected = self.text_projection(pooled)
        out = {f"txt/{k}": v for k, v in out.items()}
        out["txt/pre_logits"] = pooled
        out["txt/projected"] = projected
        return l2_normalize(projected), out

    def __call__(
        self,
        images: jax.Array,
        ids: jax.Array,
        mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Both towers: ``({"image": [batch, embed], "text": [batch, embed], "logit_scale": [],
        "logit_bias": []}, intermediates)`` (``logit_bias`` is 0 without a bias parameter)."""
        image, image_out = self.encode_image(images, deterministic)
        text, text_out = self.encode_text(ids, mask, deterministic)
        bias = self.logit_bias if self.logit_bias_init is not None else jnp.zeros((), jnp.float32)
        outputs = {
            "image": image,
            "text": text,
            "logit_scale": self.logit_scale,
            "logit_bias": bias,
        }
        return outputs, {**image_out, **text_out}


# --- presets -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    """A dual-encoder size: the image variant (a ViT's "B/16", or "cnn" for a ``ConvNet`` with
    ``CNN_FIELDS``), image size, the text tower's size and the shared embedding dim.
    ``clip_style`` towers use CLIP's layout (LayerNorm before the encoder, no patch bias,
    quick-GELU, eps 1e-5), so OpenAI / Hugging Face checkpoints load."""

    image_variant: str
    image_size: int
    text_width: int
    text_depth: int
    text_heads: int
    embed_dim: int
    vocab_size: int = 49408
    max_len: int = 77
    clip_style: bool = True


# The ConvNet image tower of "cnn" presets: three 3x3 stages (64 -> 8 px), a 256-wide dense.
CNN_FIELDS: dict[str, Any] = dict(channels=(16, 32, 64), features=256, kernel_size=3)

PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny/8", 64, 128, 4, 4, 128, vocab_size=1024, max_len=32, clip_style=False),
    "tiny-cnn": Preset("cnn", 64, 128, 2, 4, 128, vocab_size=1024, max_len=32, clip_style=False),
    "ViT-S/16": Preset("S/16", 224, 384, 12, 6, 384),
    "ViT-B/32": Preset("B/32", 224, 512, 12, 8, 512),
    "ViT-B/16": Preset("B/16", 224, 512, 12, 8, 512),
    "ViT-L/14": Preset("L/14", 224, 768, 12, 12, 768),
}


def build(
    preset: str,
    *,
    image: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
    **dual: Any,
) -> DualEncoder:
    """A ``DualEncoder`` of a named size; ``image`` / ``text`` override tower fields (e.g.
    ``dtype``, ``remat``, ``pool``), ``dual`` the dual encoder's (``embed_dim``,
    ``logit_bias_init``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[preset]
    text_fields = dict(
        vocab_size=p.vocab_size,
        width=p.text_width,
        depth=p.text_depth,
        mlp_dim=4 * p.text_width,
        num_heads=p.text_heads,
        max_len=p.max_len,
        act="quick_gelu" if p.clip_style else "gelu",
        eot_token_id=p.vocab_size - 1 if p.clip_style else None,  # CLIP's <|endoftext|>
    )
    text_tower = TextTransformer(**{**text_fields, **(text or {})})
    return DualEncoder(
        build_image_tower(preset, **(image or {})), text_tower, **{"embed_dim": p.embed_dim, **dual}
    )


TOWER_PRESETS: tuple[str, ...] = (*PRESETS, *RESNET_PRESETS)


def build_image_tower(preset: str, **overrides: Any) -> ConvNet | ViT | ResNet:
    """The image tower of a preset alone (a ``ConvNet`` for "cnn" variants, a ``ResNet`` for
    ``resnet.PRESETS`` names, else a ``ViT``), ``overrides`` replacing its fields: the same
    module, with the same parameter names, as the preset's dual encoder holds under
    ``image_tower``, so a classifier can take its weights. ResNets (batch norm) are image-only
    presets: no dual encoder is built with them."""
    if preset in RESNET_PRESETS:
        return ResNet(**{**RESNET_PRESETS[preset], **overrides})
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {TOWER_PRESETS}")
    p = PRESETS[preset]
    if p.image_variant == "cnn":
        return ConvNet(**{**CNN_FIELDS, **overrides})
    style = dict(ln_pre=True, patch_bias=False, act="quick_gelu", ln_eps=1e-5)
    fields = {**decode_variant(p.image_variant), **(style if p.clip_style else {})}
    return ViT(**{**fields, **overrides})


def image_stride(preset: str, overrides: dict[str, Any]) -> tuple[int, str]:
    """``(stride, what)``: the image side must be a multiple of ``stride`` for the preset's
    image tower with ``overrides`` (a ConvNet's total pooling stride, or a ViT's patch size)."""
    tower = build_image_tower(preset, **overrides)
    if isinstance(tower, ResNet):
        return tower.stride, f"the ResNet's total stride {tower.stride}"
    if isinstance(tower, ConvNet):
        stride = 2 ** len(tower.channels)
        return stride, f"the ConvNet's total stride {stride}"
    return tower.patch_size, f"the patch size {tower.patch_size}"


def image_size(preset: str) -> int:
    """The image side a preset was sized for (its position table's grid)."""
    return PRESETS[preset].image_size
