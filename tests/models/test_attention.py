"""GPU readiness of attention, checked on CPU: the fused form (padded lengths, the mask as key
lengths) computes what the masked XLA form does, and cuDNN's fused kernel takes the attention of
``vit_b16``'s towers (the step lowered for CUDA, read for the kernel's custom calls)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import layers
from jaxalign.models.dual_encoder import PRESETS

FUSED_FORWARD, FUSED_BACKWARD = "__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"


def _qkv(rng, batch, queries, keys, heads=2, head_dim=8):
    q = rng.normal(size=(batch, queries, heads, head_dim)).astype(np.float32)
    k, v = rng.normal(size=(2, batch, keys, heads, head_dim)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


@pytest.mark.parametrize(
    ("queries", "keys", "causal", "masked"),
    [(197, 197, False, False), (77, 77, True, True), (13, 13, False, True), (1, 50, False, False)],
)
def test_the_padded_form_equals_the_masked_one(queries, keys, causal, masked):
    """Values and gradients (of q, k, v) agree, for ViT-B/16's 197 tokens, CLIP's causal 77
    with right padding, a bidirectional padded text, and a one-query pooling head."""
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 3, queries, keys)
    mask = None
    if masked:
        lengths = np.array([keys, keys // 2, 3])
        mask = jnp.asarray(np.arange(keys)[None, :] < lengths[:, None], jnp.int32)
    weights = jnp.asarray(rng.normal(size=q.shape).astype(np.float32))

    def loss(fn):
        def f(q, k, v):
            out = fn(q, k, v, mask, causal, "xla")
            if mask is not None and queries == keys:  # padded queries' rows are not used
                out = out * mask[:, :, None, None]
            return jnp.sum(out * weights)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)  # one compile

    (value, grads), (expected, expected_grads) = (
        loss(layers.padded_attention),
        loss(layers.dot_product_attention),
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gpus_get_the_fused_kernel_for_half_precision_heads_it_takes():
    bf16 = jnp.bfloat16
    assert layers.attention_implementation(64, bf16, fused_device=True) == "cudnn"
    assert layers.attention_implementation(64, jnp.float16, fused_device=True) == "cudnn"
    assert layers.attention_implementation(64, jnp.float32, fused_device=True) == "xla"
    assert layers.attention_implementation(60, bf16, fused_device=True) == "xla"  # not 8k
    assert layers.attention_implementation(64, bf16, fused_device=False) == "xla"
    assert not layers.fused_attention_device()  # these CPU devices
    assert layers.attention_implementation(64, bf16) == "xla"


@pytest.mark.parametrize(
    ("platform", "capability", "fused"),
    [
        ("gpu", "9.0", True),
        ("gpu", "8.0", True),
        ("gpu", "7.0", False),
        ("gpu", "gfx90a", False),
        ("gpu", None, False),
        ("tpu", None, False),
    ],
)
def test_the_fused_kernel_needs_an_nvidia_gpu_from_ampere_on(
    monkeypatch, platform, capability, fused
):
    """H100 / H200 (9.0) and A100 (8.0) run it; V100 (7.0), ROCm GPUs and TPUs do not."""

    class Device:
        pass

    device = Device()
    device.platform, device.compute_capability = platform, capability
    monkeypatch.setattr(layers.jax, "devices", lambda *args: [device])
    assert layers.fused_attention_device() is fused


def _kernel_calls(text: str) -> dict[str, int]:
    calls = re.findall(r"(__cudnn\$\w+)", text)
    return {name: calls.count(name) for name in set(calls)}


def test_vit_b16_attention_lowers_to_the_fused_kernel(lower_for_cuda):
    """Forward and backward of ViT-B/16's image attention (197 tokens, 12 heads of 64) and of
    CLIP's causal text attention (77 tokens with padding, 8 heads of 64) in bfloat16."""
    preset = PRESETS["ViT-B/16"]
    text_heads, head_dim = preset.text_heads, preset.text_width // preset.text_heads
    cases = [
        ((2, 197, 12, 64), None, False),
        ((2, preset.max_len, text_heads, head_dim), (2, preset.max_len), True),
    ]
    for shape, mask_shape, causal in cases:
        qkv = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
        mask = jax.ShapeDtypeStruct(mask_shape or (1,), jnp.int32)

        def loss(q, k, v, mask, causal=causal, masked=mask_shape is not None):
            out = layers.dot_product_attention(q, k, v, mask if masked else None, causal, "cudnn")
            return jnp.sum(out.astype(jnp.float32))

        text = lower_for_cuda(jax.value_and_grad(loss, argnums=(0, 1, 2)), qkv, qkv, qkv, mask)
        assert _kernel_calls(text) == {FUSED_FORWARD: 1, FUSED_BACKWARD: 1}, shape


def test_odd_lengths_are_what_the_padding_is_for(lower_for_cuda):
    """Without the padding, the kernel refuses ViT-B/16's 197 tokens in training."""
    qkv = jax.ShapeDtypeStruct((2, 197, 12, 64), jnp.bfloat16)

    def loss(q, k, v):
        out = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        return jnp.sum(out.astype(jnp.float32))

    with pytest.raises(NotImplementedError, match="sequence length"):
        lower_for_cuda(jax.grad(loss, argnums=(0, 1, 2)), qkv, qkv, qkv)
