"""The dual encoder: initial temperature / bias, unit embeddings, intermediates, preset sizes
against the same architectures built by transformers."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import models
from jaxalign.models.dual_encoder import image_size


def _tiny_inputs(batch=2):
    images = jax.random.normal(jax.random.key(0), (batch, 64, 64, 3))
    ids = jax.random.randint(jax.random.key(1), (batch, 16), 0, 1024)
    return images, ids


def test_tiny_dual_encoder_outputs():
    model = models.build("tiny")
    images, ids = _tiny_inputs()
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, ids))
    np.testing.assert_allclose(variables["params"]["logit_scale"], math.log(1 / 0.07), rtol=1e-6)
    assert "logit_bias" not in variables["params"]
    outputs, inter = model.apply(variables, images, ids)
    assert outputs["image"].shape == outputs["text"].shape == (2, 128)
    np.testing.assert_allclose(jnp.linalg.norm(outputs["image"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(outputs["text"], axis=1), 1.0, rtol=1e-5)
    assert float(outputs["logit_bias"]) == 0.0
    for tower in ("img", "txt"):
        assert inter[f"{tower}/pre_logits"].shape == (2, 128)
        projected = inter[f"{tower}/projected"]
        np.testing.assert_allclose(
            projected / jnp.linalg.norm(projected, axis=1, keepdims=True),
            outputs["image" if tower == "img" else "text"],
            rtol=1e-5,
            atol=1e-6,
        )
    # each encoder alone gives the same embeddings
    image_alone, _ = model.apply(variables, images, method=model.encode_image)
    np.testing.assert_array_equal(image_alone, outputs["image"])


def test_cnn_preset_has_a_conv_net_image_tower():
    model = models.build("tiny-cnn", text={"causal": False, "pool": "mean"})
    assert isinstance(model.image_tower, models.ConvNet)
    images, ids = _tiny_inputs()
    variables = nn.unbox(model.init(jax.random.key(0), images, ids))
    outputs, inter = model.apply(variables, images, ids, jnp.ones_like(ids))
    assert outputs["image"].shape == outputs["text"].shape == (2, 128)
    np.testing.assert_allclose(jnp.linalg.norm(outputs["image"], axis=1), 1.0, rtol=1e-5)
    assert inter["img/conv"].shape == (2, 8, 8, 64)  # three 2x2 pools of 64x64
    assert inter["img/pre_logits"].shape == (2, 256)


def test_siglip_initialisation():
    model = models.build("tiny", logit_scale_init=math.log(10.0), logit_bias_init=-10.0)
    images, ids = _tiny_inputs()
    params = jax.eval_shape(model.init, jax.random.key(0), images, ids)["params"]
    assert "logit_bias" in params
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, ids))
    np.testing.assert_allclose(variables["params"]["logit_scale"], math.log(10.0), rtol=1e-6)
    np.testing.assert_allclose(variables["params"]["logit_bias"], -10.0)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown model preset 'ViT-X/3'.*ViT-B/16"):
        models.build("ViT-X/3")


def _count(model, preset):
    size = image_size(preset)
    shapes = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
        jax.ShapeDtypeStruct((1, 77), jnp.int32),
    )
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes)))


@pytest.mark.parametrize("preset", ["ViT-B/32", "ViT-B/16"])
def test_parameter_count_equals_transformers_clip(preset):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    patch = int(preset.split("/")[1])
    config = transformers.CLIPConfig(
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            patch_size=patch,
            image_size=224,
        ),
        text_config=dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            vocab_size=49408,
            max_position_embeddings=77,
        ),
        projection_dim=512,
    )
    with torch.device("meta"):  # shapes only, nothing allocated
        reference = transformers.CLIPModel(config)
    expected = sum(p.numel() for p in reference.parameters())
    assert _count(models.build(preset), preset) == expected
