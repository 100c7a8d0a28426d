"""The image and text towers and the digit CNN: shapes, pooling, masking, errors, remat, bf16."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import ConvNet, TextTransformer, ViT

KEY = jax.random.key(0)
SMALL_VIT = dict(patch_size=4, width=32, depth=2, mlp_dim=64, num_heads=4)
SMALL_TEXT = dict(vocab_size=50, width=32, depth=2, mlp_dim=64, num_heads=4, max_len=12)


def _images(batch=3, size=16, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _ids(batch=3, length=10, seed=1, vocab=50):
    return jax.random.randint(jax.random.key(seed), (batch, length), 1, vocab - 1)


def _init(model, *args):
    return nn.unbox(jax.jit(model.init)(KEY, *args))  # one compile, not one per operation


@pytest.mark.parametrize("pool", ["cls", "mean", "map"])
@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_vit_shapes_and_intermediates(pool, posemb):
    model = ViT(**SMALL_VIT, pool=pool, posemb=posemb)
    images = _images()
    variables = _init(model, images)
    pooled, out = model.apply(variables, images)
    assert pooled.shape == (3, 32)
    assert out["patches"].shape == (3, 16, 32)  # a 4x4 grid of 4x4 patches
    assert out["encoded"].shape == (3, 16 + (pool == "cls"), 32)
    np.testing.assert_array_equal(out["pooled"], pooled)
    assert ("pos_embedding" in variables["params"]) == (posemb == "learn")
    if pool == "mean":
        np.testing.assert_allclose(pooled, out["encoded"].mean(1), rtol=1e-6, atol=1e-6)


def test_vit_rejects_image_size_the_patch_grid_does_not_divide():
    model = ViT(**SMALL_VIT)
    with pytest.raises(ValueError, match=r"image size 18x18 is not divisible by patch_size 4"):
        model.init(KEY, _images(size=18))


def test_vit_rejects_unknown_pool():
    with pytest.raises(ValueError, match="pool"):
        ViT(**SMALL_VIT, pool="max").init(KEY, _images())


def test_causal_text_tower_does_not_look_ahead():
    model = TextTransformer(**SMALL_TEXT, pool="none")
    ids = _ids()
    variables = _init(model, ids)
    _, out = model.apply(variables, ids)
    changed = ids.at[:, 6:].set((ids[:, 6:] + 7) % 49 + 1)
    _, out_changed = model.apply(variables, changed)
    np.testing.assert_allclose(out["encoded"][:, :6], out_changed["encoded"][:, :6], atol=1e-6)
    assert not np.allclose(out["encoded"][:, 6:], out_changed["encoded"][:, 6:])


def test_bidirectional_text_tower_ignores_padding():
    model = TextTransformer(
        **SMALL_TEXT, causal=False, pre_norm=False, pool="first", type_vocab_size=2
    )
    ids = _ids()
    mask = jnp.arange(10)[None, :] < jnp.array([[10], [7], [3]])
    variables = _init(model, ids, mask)
    _, out = model.apply(variables, ids, mask)
    padded_changed = jnp.where(mask, ids, (ids + 11) % 49 + 1)
    _, out_changed = model.apply(variables, padded_changed, mask)
    real = np.asarray(mask)[..., None]
    np.testing.assert_allclose(
        np.where(real, out["encoded"], 0), np.where(real, out_changed["encoded"], 0), atol=1e-5
    )
    # bidirectional: an early token sees later ones
    later_changed = ids.at[0, 8].set((ids[0, 8] + 5) % 49 + 1)
    _, out_later = model.apply(variables, later_changed, mask)
    assert not np.allclose(out["encoded"][0, 0], out_later["encoded"][0, 0])


def test_eot_pooling_takes_the_first_end_of_text_token():
    model = TextTransformer(**SMALL_TEXT, pool="eot", eot_token_id=49)
    ids = _ids().at[0, 4].set(49).at[0, 7].set(49).at[1, 9].set(49)  # row 2 has none
    variables = _init(model, ids)
    pooled, out = model.apply(variables, ids)
    np.testing.assert_array_equal(pooled[0], out["encoded"][0, 4])
    np.testing.assert_array_equal(pooled[1], out["encoded"][1, 9])
    np.testing.assert_array_equal(pooled[2], out["encoded"][2, -1])  # no EOT: the last token
    argmax = TextTransformer(**SMALL_TEXT, pool="argmax")
    pooled, out = argmax.apply(variables, ids)
    np.testing.assert_array_equal(pooled[0], out["encoded"][0, 4])


def test_text_tower_rejects_token_ids_out_of_range_and_overlong_input():
    model = TextTransformer(**SMALL_TEXT)
    variables = _init(model, _ids())
    with pytest.raises(ValueError, match=r"token ids out of range: found 50 .* vocabulary of 50"):
        model.apply(variables, _ids().at[1, 2].set(50))
    with pytest.raises(ValueError, match="found -1"):
        model.apply(variables, _ids().at[1, 2].set(-1))
    with pytest.raises(ValueError, match="sequence length 13 exceeds max_len 12"):
        model.apply(variables, _ids(length=13))


def test_conv_net_shapes_and_errors():
    model = ConvNet(channels=(8, 16), features=32)
    images = _images(size=28)
    variables = _init(model, images)
    features, out = model.apply(variables, images)
    assert features.shape == (3, 32) and out["conv"].shape == (3, 7, 7, 16)
    with pytest.raises(ValueError, match="30x30 is not divisible by 4"):
        model.init(KEY, _images(size=30))


def _tower(kind, remat):
    if kind == "vit":
        return ViT(**SMALL_VIT, remat=remat), _images()
    if kind == "cnn":
        return ConvNet(channels=(8, 16), features=32, kernel_size=3, remat=remat), _images()
    return TextTransformer(**SMALL_TEXT, remat=remat), _ids()


@pytest.mark.parametrize("kind", ["vit", "cnn", "text"])
@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_changes_neither_outputs_nor_gradients(kind, remat):
    plain, x = _tower(kind, "none")
    rematerialised, _ = _tower(kind, remat)
    variables = _init(plain, x)

    def loss(variables, model):
        pooled, _ = model.apply(variables, x)
        return jnp.sum(jnp.sin(pooled))

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    value, grads = grad_fn(variables, plain)
    value_r, grads_r = grad_fn(variables, rematerialised)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    # Recomputation reorders float32 sums: agree to 1e-5 of the largest gradient entry
    # (some gradients, e.g. the key bias's, are zero up to rounding).
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads))
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_bfloat16_compute_stays_close_to_float32():
    """Stated tolerance: bfloat16 compute (float32 parameters) gives pooled features within 5e-2
    of float32 relative to their largest entry; parameters stay float32."""
    images = _images()
    f32 = ViT(**SMALL_VIT)
    bf16 = ViT(**SMALL_VIT, dtype=jnp.bfloat16)
    variables = _init(f32, images)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(_init(bf16, images)))
    ref, _ = f32.apply(variables, images)
    low, _ = bf16.apply(variables, images)
    assert low.dtype == jnp.bfloat16
    error = np.max(np.abs(np.asarray(low, np.float32) - ref)) / np.max(np.abs(ref))
    assert error < 5e-2, error
    assert error > 0  # really computed in bfloat16
