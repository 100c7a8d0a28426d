"""Checkpoints: a sharded state and the data positions round-trip exactly; only complete
checkpoints count; ``keep``; a read-only checkpointer touches nothing; a damaged newest
checkpoint falls back to the one before; a failed background save is reported in one line."""

import contextlib
import resource
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign.errors import DataError
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
    restored, data, step, notes = checkpointer.restore(_abstract(state))
    assert notes == []
    checkpointer.close()
    assert step == 4 and data == {"process_0": {"position": 4, "epoch": 0}}
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
    state, data, step, _ = reopened.restore(_abstract(_state(mesh)))
    assert step == 25 and data == {"process_0": {"position": 25}}
    np.testing.assert_array_equal(state["key_free"]["bias"], np.full((3,), 25.5))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint at step 30"):
        reopened.restore(_abstract(_state(mesh)), step=30)
    reopened.close()


def test_restore_from_an_empty_directory_names_it(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=1)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint in"):
        checkpointer.restore({})
    checkpointer.close()


def _three_checkpoints(directory, mesh):
    checkpointer = Checkpointer(directory, keep=3)
    for step in (1, 2, 3):
        checkpointer.save(step, _state(mesh, offset=float(step)), {"position": step})
        checkpointer.wait()
    checkpointer.close()


def _truncate_array_files(step_dir):
    for path in step_dir.rglob("*"):
        if path.is_file() and path.parent.name == "d":
            with open(path, "r+b") as f:
                f.truncate(path.stat().st_size // 2)


def _delete_manifest(step_dir):
    (step_dir / "state" / "manifest.ocdbt").unlink()


def _delete_data_item(step_dir):
    (step_dir / "data" / "metadata").unlink()


@pytest.mark.parametrize("damage", [_truncate_array_files, _delete_manifest, _delete_data_item])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    mesh = make_mesh({"fsdp": -1})
    _three_checkpoints(tmp_path / "checkpoints", mesh)
    damage(tmp_path / "checkpoints" / "3")
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=3)
    state, data, step, notes = checkpointer.restore(_abstract(_state(mesh)))
    assert step == 2 and data == {"process_0": {"position": 2}}
    np.testing.assert_array_equal(state["key_free"]["bias"], np.full((3,), 2.5))
    # The damaged one is named, moved aside (not deleted), and no longer counts.
    assert len(notes) == 1 and "checkpoints/3 does not read" in notes[0], notes
    moved = list((tmp_path / "corrupt_checkpoints").iterdir())
    assert [p.name.split("-")[0] for p in moved] == ["3"] and str(moved[0]) in notes[0]
    assert checkpointer.all_steps() == [1, 2] and checkpointer.latest_step() == 2
    # The run can save step 3 again.
    assert checkpointer.save(3, state, {"position": 3})
    checkpointer.close()


def test_when_no_checkpoint_reads_each_is_named_and_none_is_moved(tmp_path):
    mesh = make_mesh({"fsdp": -1})
    _three_checkpoints(tmp_path / "checkpoints", mesh)
    for step in (1, 2, 3):
        _delete_data_item(tmp_path / "checkpoints" / str(step))
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=3)
    with pytest.raises(DataError, match=r"no checkpoint in .* can be read: step 3: .*step 1:"):
        checkpointer.restore(_abstract(_state(mesh)))
    assert checkpointer.all_steps() == [1, 2, 3]
    assert not (tmp_path / "corrupt_checkpoints").exists()
    checkpointer.close()


def test_a_reader_skips_a_damaged_checkpoint_without_moving_it(tmp_path):
    mesh = make_mesh({"fsdp": -1})
    _three_checkpoints(tmp_path / "checkpoints", mesh)
    _truncate_array_files(tmp_path / "checkpoints" / "3")
    reader = Checkpointer(tmp_path / "checkpoints", keep=3, read_only=True)
    abstract = _abstract(_state(mesh))
    part, step = reader.restore_part({"key_free": abstract["key_free"]})
    assert step == 2 and len(reader.skipped) == 1 and "checkpoints/3 skipped" in reader.skipped[0]
    np.testing.assert_array_equal(part["key_free"]["bias"], np.full((3,), 2.5))
    with pytest.raises(DataError, match=r"checkpoint 3 in .* does not read"):
        reader.restore_part({"weights": abstract["weights"]}, step=3)
    assert reader.all_steps() == [1, 2, 3]
    reader.close()


@contextlib.contextmanager
def small_files_only_context():
    """Files written past 20 kB fail with EFBIG (as a full disk fails a write), until the end of
    the test; the soft limit only, so it can be lifted again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _big_state(mesh):
    return {"weights": jax.device_put(jnp.arange(64_000.0), NamedSharding(mesh, PartitionSpec()))}


def test_a_failed_background_save_is_reported_once_in_one_line(tmp_path, caplog):
    mesh = make_mesh({"fsdp": -1})
    checkpointer = Checkpointer(tmp_path, keep=3)
    checkpointer.save(1, _big_state(mesh), {"position": 1})
    checkpointer.wait()
    with small_files_only_context():
        assert checkpointer.save(2, _big_state(mesh), {"position": 2})
        deadline = time.time() + 60
        failures = []
        while not failures and time.time() < deadline:
            failures = checkpointer.check_saves()
            time.sleep(0.02)
    assert len(failures) == 1 and "\n" not in failures[0], failures
    assert failures[0].startswith(f"checkpoint 2 could not be saved in {tmp_path}: ")
    assert "File too large" in failures[0]
    assert checkpointer.failed_in_a_row == 1 and checkpointer.check_saves() == []
    # orbax's own multi-line error logs are left out; the partial write is gone.
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
    assert checkpointer.all_steps() == [1]
    # A save that succeeds again resets the count.
    checkpointer.save(3, _big_state(mesh), {"position": 3})
    assert checkpointer.wait() is None and checkpointer.failed_in_a_row == 0
    checkpointer.close()
