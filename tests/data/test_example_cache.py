"""The example cache: the same batches as without it, each record transformed once, a byte cap,
key-dependent transforms and a second source refused, workers start empty."""

from __future__ import annotations

import dataclasses
import pickle
import threading

import grain
import numpy as np
import pytest

from jaxalign.data import pipeline as P
from jaxalign.data import transforms as T
from jaxalign.data.example_cache import ExampleCache
from tests.data.test_pipeline import ListSource, assert_same_batches, take

CALLS: dict[str, dict[int, int]] = {}
CALLS_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CountingTransform:
    """``{"value": [4] float32}`` from the record alone (``uses_key`` False), counting calls per
    index in ``CALLS[name]``; every ``skip_every``-th index is skipped."""

    name: str
    skip_every: int = 0
    uses_key = False

    def __call__(self, record, key: T.ExampleKey):
        with CALLS_LOCK:
            calls = CALLS.setdefault(self.name, {})
            calls[key.index] = calls.get(key.index, 0) + 1
        if self.skip_every and key.index % self.skip_every == 0:
            return T.Skip("planted")
        return {"value": np.full(4, record["value"] * 1.5, np.float32)}


@pytest.fixture(autouse=True)
def fresh_counts():
    CALLS.clear()


def pipeline(cache=None, *, name="plain", n=20, skip_every=7, threads=1, **kwargs):
    """8-example batches of ``n`` records; one read thread unless told (two threads may each
    transform a record the cache does not hold yet: the count of calls depends on timing)."""
    return P.make_pipeline(
        ListSource(n), seed=5, global_batch_size=8, process_index=0, process_count=1,
        transform=CountingTransform(name, skip_every), cache=cache,
        read_options=grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2), **kwargs,
    )  # fmt: skip


def take_and_close(pipeline, count, state=None):
    batches, iterator = take(pipeline, count, state)
    iterator.close()
    return batches


def test_cached_batches_equal_uncached_and_each_record_is_transformed_once():
    plain, plain_iterator = take(pipeline(), 12)  # 96 examples: about 5 epochs of 17 good
    plain_iterator.close()
    cache = ExampleCache(1 << 20)
    cached, iterator = take(pipeline(cache, name="cached"), 12)
    assert_same_batches(plain, cached)
    calls = CALLS["cached"]
    assert sorted(calls) == list(range(20)) and set(calls.values()) == {1}, calls  # skips too
    assert len(cache) == 20 and cache.nbytes == 17 * 16 and not cache.full
    assert iterator.skip_counts() == plain_iterator.skip_counts() == {"planted": 16}
    # Resuming from a state with a cache gives what the uncached stream gives next.
    state = iterator.get_state()
    iterator.close()
    more_plain = take_and_close(pipeline(), 3, state)
    more_cached = take_and_close(pipeline(cache, name="cached"), 3, state)
    assert_same_batches(more_plain, more_cached)
    with pytest.raises(ValueError, match="read-only"):
        cache.get(1)["value"][0] = 0.0


def test_a_full_cache_serves_what_it_holds_and_transforms_the_rest():
    cache = ExampleCache(5 * 16)  # five examples' arrays
    cached = take_and_close(pipeline(cache, name="capped", skip_every=0), 10)  # 4 epochs
    plain = take_and_close(pipeline(skip_every=0), 10)
    assert_same_batches(plain, cached)
    assert cache.full and cache.nbytes == 5 * 16 and len(cache) == 5
    calls, kept = CALLS["capped"], [i for i in range(20) if cache.get(i) is not None]
    assert len(kept) == 5 and all(calls[i] == 1 for i in kept)
    assert all(calls[i] >= 4 for i in range(20) if i not in kept)  # each epoch read


def test_refuses_a_key_dependent_transform_and_a_second_source():
    cache = ExampleCache(1 << 20)
    with pytest.raises(ValueError, match="uses_key"):
        P.make_pipeline(
            ListSource(8), seed=0, global_batch_size=4, process_index=0, process_count=1,
            transform=T.ImageTransform(8, train=True), cache=cache,
        )  # fmt: skip
    take_and_close(pipeline(cache), 1)
    with pytest.raises(ValueError, match="one cache per source"):
        pipeline(cache, n=21)
    with pytest.raises(ValueError, match="one cache per source"):
        pipeline(cache, name="another transform")
    assert not T.ImageTransform(8, train=False).uses_key
    with pytest.raises(ValueError, match="max_bytes"):
        ExampleCache(0)


def test_a_pickled_cache_starts_empty():
    cache = ExampleCache(1 << 20)
    take_and_close(pipeline(cache), 3)
    copy = pickle.loads(pickle.dumps(cache))
    assert len(cache) > 0 and len(copy) == 0 and copy.max_bytes == cache.max_bytes
    with pytest.raises(ValueError, match="one cache per source"):
        pipeline(copy, n=21)  # still bound to the first source


def test_same_batches_with_four_read_threads_a_worker_process_and_a_moved_start():
    plain = take_and_close(pipeline(threads=4), 12)
    cache = ExampleCache(1 << 20)
    assert_same_batches(plain, take_and_close(pipeline(cache, name="threads", threads=4), 12))
    assert len(cache) == 20  # each index stored once, whichever thread transformed it first
    # The cache travels to a worker process empty, and the worker's own copy serves it.
    workers = take_and_close(pipeline(ExampleCache(1 << 20), name="worker", worker_count=1), 12)
    assert_same_batches(plain, workers)
    # An elastic resume rebuilds the pipeline with the same cache (Pipeline.at): same batches.
    moved = pipeline(cache, name="threads", threads=4).at(24)
    assert_same_batches(take_and_close(pipeline(threads=4).at(24), 4), take_and_close(moved, 4))
