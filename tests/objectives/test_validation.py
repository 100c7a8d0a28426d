"""Bad input fails at trace time with a message naming the argument, the shapes and the mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import objectives
from tests.objectives.cases import mesh_named

EMB = np.ones((16, 8), np.float32)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda m: objectives.clip_loss(EMB[0], EMB, 1.0, mesh=m),
            ValueError,
            r"clip_loss: image_emb must be 2-D .*image_emb \(8,\).*text_emb \(16, 8\)",
        ),
        (
            lambda m: objectives.clip_loss(EMB, EMB[:12], 1.0, mesh=m),
            ValueError,
            r"clip_loss: batch sizes must match .*text_emb \(12, 8\)",
        ),
        (
            lambda m: objectives.clip_loss(EMB, EMB[:, :4], 1.0, mesh=m),
            ValueError,
            r"clip_loss: inputs must share the feature dim",
        ),
        (
            lambda m: objectives.clip_loss(EMB, EMB.astype(jnp.bfloat16), 1.0, mesh=m),
            TypeError,
            r"clip_loss: inputs must share one dtype .*float32.*bfloat16",
        ),
        (
            lambda m: objectives.clip_loss(EMB, EMB.astype(np.int32), 1.0, mesh=m),
            TypeError,
            r"clip_loss: text_emb must be floating point",
        ),
        (
            lambda m: objectives.clip_loss(EMB, EMB, np.nan, mesh=m),
            ValueError,
            r"clip_loss: logit_scale must be finite, got nan",
        ),
        (
            lambda m: objectives.clip_loss(EMB, EMB, np.ones(2), mesh=m),
            ValueError,
            r"clip_loss: logit_scale must be a scalar, got shape \(2,\)",
        ),
        (
            lambda m: objectives.clip_loss(EMB, EMB, 1.0, mesh=m, impl="magic"),
            ValueError,
            r"clip_loss: impl must be one of",
        ),
        (
            lambda m: objectives.clip_loss(EMB, EMB, 1.0, mesh=m, label_smoothing=1.0),
            ValueError,
            r"clip_loss: label_smoothing must be in \[0, 1\)",
        ),
        (
            lambda m: objectives.siglip_loss(EMB, EMB, 1.0, np.inf, mesh=m),
            ValueError,
            r"siglip_loss: logit_bias must be finite",
        ),
        (
            lambda m: objectives.nt_xent(EMB, EMB, 0.0, mesh=m),
            ValueError,
            r"nt_xent: temperature must be positive",
        ),
        (
            lambda m: objectives.nt_xent(EMB, EMB, -np.inf, mesh=m),
            ValueError,
            r"nt_xent: temperature must be finite",
        ),
        (
            lambda m: objectives.mmd(EMB, EMB, estimator="quadratic", mesh=m),
            ValueError,
            r"mmd: estimator must be one of \('unbiased', 'biased', 'linear'\)",
        ),
        (
            lambda m: objectives.mmd(EMB, EMB[:8], estimator="linear", mesh=m),
            ValueError,
            r"mmd: batch sizes must match .*source \(16, 8\).*target \(8, 8\)",
        ),
        (
            lambda m: objectives.mmd(EMB, EMB, kernel_mults=(1.0, -1.0), mesh=m),
            ValueError,
            r"mmd: kernel_mults must be positive",
        ),
        (
            lambda m: objectives.mmd(EMB[:1], EMB, mesh=m),
            ValueError,
            r"mmd: the unbiased estimator needs at least 2 samples per domain",
        ),
        (
            lambda m: objectives.coral(EMB[:1], EMB, mesh=m),
            ValueError,
            r"coral: covariances need at least 2 samples",
        ),
        (
            lambda m: objectives.domain_adversarial_loss(EMB, EMB[:, 0], mesh=m),
            ValueError,
            r"domain_adversarial_loss: source_logits must be \[batch\] or \[batch, 1\].*\(16, 8\)",
        ),
    ],
)
@pytest.mark.parametrize("mesh_name", [None, "2x4"])
def test_bad_input_names_the_problem(call, error, pattern, mesh_name):
    mesh = None if mesh_name is None else mesh_named(mesh_name)
    with pytest.raises(error, match=pattern) as raised:
        call(mesh)
    if mesh is not None and "must be 2-D" in pattern:
        assert "mesh {data: 2, fsdp: 4, tensor: 1}" in str(raised.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: objectives.clip_loss(EMB[:12], EMB[:12], 1.0, mesh=m),
        lambda m: objectives.siglip_loss(EMB[:12], EMB[:12], 1.0, 0.0, mesh=m),
        lambda m: objectives.nt_xent(EMB[:12], EMB[:12], 0.1, mesh=m),
        lambda m: objectives.mmd(EMB, EMB[:12], mesh=m),
        lambda m: objectives.coral(EMB[:12], EMB, mesh=m),
        lambda m: objectives.domain_adversarial_loss(EMB[:, 0], EMB[:12, 0], mesh=m),
    ],
)
def test_batch_the_mesh_does_not_divide(call):
    with pytest.raises(
        ValueError,
        match=r"global batch 12 .* mesh \{data: 2, fsdp: 4, tensor: 1\} "
        r"\(8 shards\) do not divide",
    ):
        call(mesh_named("2x4"))


def test_mesh_without_batch_axes_is_refused():
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(ValueError, match=r"clip_loss: mesh \{batch: 8\} has none of the batch"):
        objectives.clip_loss(EMB, EMB, 1.0, mesh=mesh)


def test_linear_mmd_needs_even_batch_per_device():
    with pytest.raises(ValueError, match=r"multiple of 2 x 8 shards"):
        objectives.mmd(EMB[:8], EMB[:8], estimator="linear", mesh=mesh_named("8"))


def test_traced_scale_is_accepted_under_jit():
    """Values cannot be checked when traced; shapes still are."""
    loss = jax.jit(lambda s: objectives.clip_loss(EMB, EMB, s))
    assert jnp.isfinite(loss(jnp.float32(1.0)))
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        jax.jit(lambda s: objectives.clip_loss(EMB, EMB, s))(jnp.ones(3))
