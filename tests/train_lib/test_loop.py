"""The loop's check of a train stream's first batch against the task's ``batch_spec``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.train_lib.loop import check_batch

SPEC = {
    "source": {"image": jax.ShapeDtypeStruct((8, 4, 4, 3), jnp.float32)},
    "label": jax.ShapeDtypeStruct((8,), jnp.int32),
}


def _batch(rows=8, label_dtype=np.int32):
    return {
        "source": {"image": np.zeros((rows, 4, 4, 3), np.float32)},
        "label": np.zeros((rows,), label_dtype),
    }


def test_a_matching_batch_passes_per_process_shares():
    check_batch(_batch(), SPEC, processes=1)
    check_batch(_batch(rows=4), SPEC, processes=2)  # each process holds half the batch


@pytest.mark.parametrize(
    ("batch", "processes", "names"),
    [
        (_batch(rows=8), 2, ["['label']", "(8,)", "asks (4,)", "over 2"]),
        (_batch(label_dtype=np.int64), 1, ["['label']", "int64", "int32"]),
        ({"label": np.zeros((8,), np.int32)}, 1, ["structure"]),
    ],
)
def test_a_mismatch_names_the_leaf(batch, processes, names):
    with pytest.raises(ValueError) as error:
        check_batch(batch, SPEC, processes=processes)
    for name in names:
        assert name in str(error.value), str(error.value)
