"""The grain pipeline: determinism, exact resume, per-process shards, skips, global arrays."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from jaxalign.data import pipeline as P
from jaxalign.data import transforms as T
from jaxalign.data.sources import WebDatasetSource
from jaxalign.errors import DataError
from tests.data.test_sources import expected_skips, planted_shards, whitespace_tokenizer


class ListSource:
    """``source[i] = {"value": i}``: a random-access source of ``n`` records."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"value": int(index)}

    def __repr__(self) -> str:
        return f"ListSource({self.n})"


@dataclasses.dataclass(frozen=True)
class IndexTransform:
    """``{"index": [], "epoch": [], "noise": [3]}``; every ``skip_every``-th index is skipped."""

    skip_every: int = 0

    def __call__(self, record, key: T.ExampleKey):
        assert record["value"] == key.index
        if self.skip_every and key.index % self.skip_every == 0:
            return T.Skip("planted")
        noise = key.rng().integers(0, 2**31, size=3).astype(np.int64)
        return {"index": np.int32(key.index), "epoch": np.int32(key.epoch), "noise": noise}


def take(pipeline, count: int, state=None):
    """The next ``count`` batches (after restoring ``state``), and the iterator."""
    iterator = iter(pipeline)
    if state is not None:
        iterator.set_state(json.loads(json.dumps(state)))  # states travel as JSON
    batches = [next(iterator) for _ in range(count)]
    return batches, iterator


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])


def make(n=20, seed=0, batch=8, skip_every=7, **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return P.make_pipeline(
        ListSource(n),
        seed=seed,
        global_batch_size=batch,
        transform=IndexTransform(skip_every),
        **kwargs,
    )


def test_same_seed_same_batches_other_seed_other_order():
    first, _ = take(make(seed=3), 6)
    second, _ = take(make(seed=3), 6)
    assert_same_batches(first, second)
    other, _ = take(make(seed=4), 6)
    assert not np.array_equal(first[0]["index"], other[0]["index"])
    assert first[0]["index"].shape == (8,) and first[0]["noise"].shape == (8, 3)
    # Each epoch is a permutation of the source (less the planted skips), reshuffled per epoch.
    indices = np.concatenate([b["index"] for b in first])
    epochs = np.concatenate([b["epoch"] for b in first])
    kept = [i for i in range(20) if i % 7]
    assert sorted(indices[epochs == 0]) == kept
    assert not np.array_equal(indices[epochs == 0], indices[epochs == 1][: len(kept)])


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_resume_after_k_batches_is_exact_across_epochs(k):
    # 20 records, 3 skipped per epoch, 8 per batch: batches 2, 4, 6 straddle epoch boundaries.
    uninterrupted, full_iter = take(make(), k + 4)
    _, interrupted = take(make(), k)
    state = interrupted.get_state()
    assert json.loads(json.dumps(state)) == state
    assert state["batches"] == k
    resumed, resumed_iter = take(make(), 4, state=state)
    assert_same_batches(resumed, uninterrupted[k:])
    assert resumed_iter.skip_counts() == full_iter.skip_counts()
    assert resumed_iter.metrics()["data/batches"] == k + 4
    epochs = {int(e) for b in resumed for e in b["epoch"]}
    assert len(epochs) > 1  # the resumed batches cross an epoch boundary


def test_skip_counts_deterministic_and_in_state():
    _, iterator = take(make(), 5)  # 40 kept examples: 2 full epochs + 6 = 6 planted skips ...
    counts = iterator.skip_counts()
    assert counts == {"planted": iterator.get_state()["pipeline"]["skipped"]["planted"]}
    assert counts["planted"] >= 6
    _, again = take(make(), 5)
    assert again.skip_counts() == counts
    assert iterator.metrics() == {
        "data/batches": 5,
        "data/examples": 40,
        "data/skipped": counts["planted"],
        "data/skipped/planted": counts["planted"],
    }


def test_worker_process_gives_the_same_batches_and_resumes():
    # Read + transform in 1 worker process; filtering and batching stay in this process, so
    # the batches equal the in-process ones. About 5 s, mostly starting the workers.
    reference, _ = take(make(), 6)
    first, iterator = take(make(worker_count=1), 3)
    state = iterator.get_state()
    iterator.close()
    resumed, resumed_iter = take(make(worker_count=1), 3, state=state)
    resumed_iter.close()
    assert_same_batches(first + resumed, reference)
    assert resumed_iter.skip_counts() == take(make(), 6)[1].skip_counts()


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_disjoint_and_cover_the_epoch(process_count):
    n, global_batch = 48, 8
    single, _ = take(make(n=n, skip_every=0, num_epochs=1), n // global_batch)
    shards = []
    for index in range(process_count):
        pipeline = make(
            n=n,
            skip_every=0,
            num_epochs=1,
            process_index=index,
            process_count=process_count,
        )
        assert pipeline.per_process_batch_size == global_batch // process_count
        batches = list(pipeline)
        assert len(batches) == n // global_batch
        shards.append(batches)
    seen = [np.concatenate([b["index"] for b in batches]) for batches in shards]
    all_seen = np.concatenate(seen)
    assert len(all_seen) == n and sorted(all_seen) == list(range(n))  # disjoint, covering
    for step in range(n // global_batch):
        # Global batch `step` holds the same examples with the same augmentation on any topology.
        parts = {
            int(i): tuple(x)
            for s in shards
            for i, x in zip(s[step]["index"], s[step]["noise"], strict=True)
        }
        whole = {
            int(i): tuple(x)
            for i, x in zip(single[step]["index"], single[step]["noise"], strict=True)
        }
        assert parts == whole


def test_planted_webdataset_read_to_the_end_with_skip_counts(tmp_path):
    source = WebDatasetSource(planted_shards(tmp_path))
    pipeline = P.make_pipeline(
        source,
        seed=1,
        global_batch_size=4,
        transform=T.ImageTextTransform(8, whitespace_tokenizer(), normalize=False),
        process_index=0,
        process_count=1,
        num_epochs=1,
        drop_remainder=False,
    )
    iterator = iter(pipeline)
    batches = list(iterator)
    images = np.concatenate([b["image"] for b in batches])
    expected = expected_skips()  # odd modes and sizes are converted, not skipped
    assert iterator.skip_counts() == expected
    assert images.shape == (len(source) - sum(expected.values()), 8, 8, 3)
    assert images.dtype == np.uint8
    assert [len(b["ids"]) for b in batches] == [4] * (len(images) // 4) + [len(images) % 4]
    assert iterator.metrics()["data/skipped"] == sum(expected.values())


def test_finite_epochs_and_remainder():
    dropped = list(make(n=20, skip_every=0, num_epochs=2))
    assert [len(b["index"]) for b in dropped] == [8] * 5
    kept = list(make(n=20, skip_every=0, num_epochs=2, drop_remainder=False))
    assert [len(b["index"]) for b in kept] == [8] * 5
    kept = list(make(n=21, skip_every=0, num_epochs=1, drop_remainder=False))
    assert [len(b["index"]) for b in kept] == [8, 8, 5]


def test_settings_are_checked():
    with pytest.raises(ValueError, match=r"global_batch_size=10.*process_count=4"):
        make(batch=10, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index=2"):
        make(process_index=2, process_count=2)
    with pytest.raises(ValueError, match="seed"):
        make(seed=-1)
    with pytest.raises(ValueError, match="empty"):
        make(n=0)
    _, iterator = take(make(seed=1), 2)
    with pytest.raises(ValueError, match="seed"):
        iter(make(seed=2)).set_state(iterator.get_state())
    with pytest.raises(ValueError, match="process_index"):
        iter(make(seed=1, process_index=1, process_count=2)).set_state(iterator.get_state())


def test_default_topology_is_jax_process():
    pipeline = P.make_pipeline(
        ListSource(8), seed=0, global_batch_size=4, transform=IndexTransform()
    )
    assert (pipeline.process_index, pipeline.process_count) == (0, 1)


def test_to_global_array_shards_the_batch_over_data_and_fsdp():
    import jax
    from jax.sharding import PartitionSpec

    from jaxalign.parallel.mesh import make_mesh

    mesh = make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    (batch,), _ = take(make(n=40, batch=16, skip_every=0), 1)
    arrays = P.to_global_array(batch, mesh)
    assert set(arrays) == {"index", "epoch", "noise"}
    for name, array in arrays.items():
        assert isinstance(array, jax.Array)
        assert array.shape == batch[name].shape
        assert array.sharding.spec == PartitionSpec(("data", "fsdp"))
        assert len(array.addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(array), batch[name])
    assert arrays["noise"].addressable_shards[0].data.shape == (2, 3)
    with pytest.raises(ValueError, match="batch shards"):
        P.to_global_array({"x": np.zeros((12, 2))}, mesh)


class AllBad:
    """Every record is flagged bad by the transform; ``__key__`` / ``__url__`` as a shard's."""

    def __len__(self) -> int:
        return 50

    def __getitem__(self, index: int) -> dict:
        return {"__key__": f"sample{index:03d}", "__url__": "/data/bad.tar", "value": index}

    def __repr__(self) -> str:
        return "AllBad('/data/bad.tar')"


def _corrupt(record, key):
    return T.Skip("corrupt_image")


@pytest.mark.parametrize("prefetch", [0, 2])
def test_data_that_is_all_bad_stops_in_a_fraction_of_a_second(prefetch):
    pipeline = P.make_pipeline(
        AllBad(),
        seed=0,
        global_batch_size=4,
        transform=_corrupt,
        process_index=0,
        process_count=1,
        prefetch=prefetch,
        max_skipped_in_a_row=300,
    )
    iterator = iter(pipeline)
    started = time.perf_counter()
    with pytest.raises(P.TooManySkipped) as error:
        next(iterator)
    iterator.close()
    assert time.perf_counter() - started < 10
    message = str(error.value)
    for part in ("300 examples in a row", "max_skipped_in_a_row=300", "AllBad('/data/bad.tar')"):
        assert part in message, message
    assert "corrupt_image 300" in message and "in /data/bad.tar" in message
    assert isinstance(error.value, DataError)  # a user error: one line, exit status 2


def test_skips_between_good_examples_do_not_count_as_in_a_row():
    # Every 7th index is skipped (in shuffled order): never 3 in a row over these batches,
    # though 18 in all, so a cap of 3 is never reached.
    _, iterator = take(make(n=40, skip_every=7, max_skipped_in_a_row=3), count=12)
    metrics = iterator.metrics()
    assert metrics["data/examples"] == 12 * 8
    assert metrics["data/skipped"] == metrics["data/skipped/planted"] > 0
    with pytest.raises(ValueError, match="max_skipped_in_a_row=0"):
        make(max_skipped_in_a_row=0)
