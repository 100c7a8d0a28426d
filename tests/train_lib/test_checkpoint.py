"""Checkpoints: a sharded state and the data positions round-trip exactly; only complete
checkpoints count; ``keep``; a read-only checkpointer touches nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign.parallel import make_mesh
from jaxalign.train_lib.checkpoint import Checkpointer


def _state(mesh, offset=0.0):
    sharded = NamedSharding(mesh, PartitionSpec("fsdp"))
    return {
        "weights": jax.device_put(jnp.arange(32.0).reshape(8, 4) + offset, sharded),
        "step": jnp.int32(7),
        "key_free": {"bias": jnp.full((3,), 0.5 + offset)},
    }


def _abstract(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def test_round_trip_keeps_values_shardings_and_data_position(tmp_path):
    mesh = make_mesh({"fsdp": -1})
    state = _state(mesh)
    checkpointer = Checkpointer(tmp_path, keep=2)
    assert checkpointer.latest_step() is None
    assert checkpointer.save(4, state, {"position": 4, "epoch": 0})
    checkpointer.wait()
    restored, data, step = checkpointer.restore(_abstract(state))
    checkpointer.close()
    assert step == 4 and data == {"position": 4, "epoch": 0}
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.sharding == want.sharding
    assert restored["weights"].sharding.spec == PartitionSpec("fsdp")


def test_keep_and_incomplete_directories(tmp_path):
    mesh = make_mesh({"data": -1})
    checkpointer = Checkpointer(tmp_path, keep=2)
    for step in (10, 20, 25):
        assert checkpointer.save(step, _state(mesh, step), {"position": step})
    assert not checkpointer.save(25, _state(mesh), {"position": 0})  # already there
    checkpointer.wait()
    checkpointer.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["20", "25"]
    # A save killed half way leaves orbax's temporary directory, never a step directory.
    partial = tmp_path / "30.orbax-checkpoint-tmp-99"
    partial.mkdir()
    (partial / "junk").write_text("partial")
    reader = Checkpointer(tmp_path, keep=2, read_only=True)  # e.g. `jaxalign eval` mid-run
    assert reader.latest_step() == 25
    reader.close()
    assert partial.is_dir()  # a read-only checkpointer deletes nothing
    reopened = Checkpointer(tmp_path, keep=2)
    assert reopened.latest_step() == 25
    state, data, step = reopened.restore(_abstract(_state(mesh)))
    assert step == 25 and data == {"position": 25}
    np.testing.assert_array_equal(state["key_free"]["bias"], np.full((3,), 25.5))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint at step 30"):
        reopened.restore(_abstract(_state(mesh)), step=30)
    reopened.close()


def test_restore_from_an_empty_directory_names_it(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=1)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint in"):
        checkpointer.restore({})
    checkpointer.close()
