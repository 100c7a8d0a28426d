"""Zipped named streams: lockstep batches, exact per-stream resume, name checks, metrics, close."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxalign.data import ZippedStream, make_pipeline, transforms, zip_streams
from jaxalign.data.streams import ZippedIterator

SIZE = 4


def domain_records(n: int, labelled: bool, offset: int) -> list[dict[str, np.ndarray]]:
    """``n`` records ``{"image": [SIZE, SIZE, 3] uint8, "id": int64 (, "label": int64)}``."""
    rng = np.random.default_rng(offset)
    records = []
    for i in range(n):
        record = {
            "image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            "id": np.int64(offset + i),
        }
        if labelled:
            record["label"] = np.int64(i % 3)
        records.append(record)
    return records


@dataclasses.dataclass(frozen=True)
class DomainTransform:
    """Image to float, keeps id (and label), adds per-example noise; skips every
    ``skip_every``-th index with reason "planted"."""

    skip_every: int = 0

    def __call__(self, record, key: transforms.ExampleKey):
        if self.skip_every and key.index % self.skip_every == 0:
            return transforms.Skip("planted")
        out = {
            "image": record["image"].astype(np.float32) / 255.0,
            "id": record["id"],
            "noise": key.rng().normal(size=2).astype(np.float32),
        }
        if "label" in record:
            out["label"] = record["label"]
        return out


def source_pipeline(seed=1):
    # 10 records, 4 per batch: epochs end mid-batch.
    return make_pipeline(
        domain_records(10, labelled=True, offset=0),
        seed=seed,
        global_batch_size=4,
        transform=DomainTransform(),
        process_index=0,
        process_count=1,
    )


def target_pipeline(seed=2):
    # 14 records, 2 of them skipped per epoch, 6 per batch.
    return make_pipeline(
        domain_records(14, labelled=False, offset=1000),
        seed=seed,
        global_batch_size=6,
        transform=DomainTransform(skip_every=6),
        process_index=0,
        process_count=1,
    )


def zipped(**kwargs) -> ZippedStream:
    return zip_streams({"source": source_pipeline(**kwargs), "target": target_pipeline()})


def assert_same_tree(a, b):
    assert list(a) == list(b)
    for name in a:
        if isinstance(a[name], dict):
            assert_same_tree(a[name], b[name])
        else:
            np.testing.assert_array_equal(a[name], b[name])


def take(iterator, count: int) -> list:
    return [next(iterator) for _ in range(count)]


def test_zipped_batches_equal_separately_iterated_streams():
    steps = 7
    batches = take(iter(zipped()), steps)
    source = take(iter(source_pipeline()), steps)
    target = take(iter(target_pipeline()), steps)
    for batch, s, t in zip(batches, source, target, strict=True):
        assert list(batch) == ["source", "target"]
        assert batch["source"]["image"].shape == (4, SIZE, SIZE, 3)
        assert batch["source"]["label"].shape == (4,)
        assert batch["target"]["image"].shape == (6, SIZE, SIZE, 3)
        assert "label" not in batch["target"]
        assert_same_tree(batch["source"], s)
        assert_same_tree(batch["target"], t)
    # The streams are not interchangeable: a source seed changes the source batches only.
    other = take(iter(zipped(seed=5)), 1)[0]
    assert not np.array_equal(other["source"]["id"], batches[0]["source"]["id"])
    np.testing.assert_array_equal(other["target"]["id"], batches[0]["target"]["id"])


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_resume_is_exact_for_every_stream(k):
    total = 8
    full_iter = iter(zipped())
    uninterrupted = take(full_iter, total)
    interrupted = iter(zipped())
    take(interrupted, k)
    state = interrupted.get_state()
    interrupted.close()
    assert list(state) == ["source", "target"]
    travelled = json.loads(json.dumps(state))  # states travel as JSON
    assert travelled == state
    resumed_iter = iter(zipped())
    resumed_iter.set_state(travelled)
    resumed = take(resumed_iter, total - k)
    for a, b in zip(resumed, uninterrupted[k:], strict=True):
        assert_same_tree(a, b)
    assert resumed_iter.metrics() == full_iter.metrics()
    assert resumed_iter.get_state() == full_iter.get_state()
    # Both streams cross an epoch boundary after the resume point (an id comes back).
    for name in ("source", "target"):
        ids = np.concatenate([b[name]["id"] for b in resumed])
        assert len(set(ids.tolist())) < len(ids)


def test_state_is_each_streams_own_state():
    iterator = iter(zipped())
    take(iterator, 3)
    source, target = iter(source_pipeline()), iter(target_pipeline())
    take(source, 3)
    take(target, 3)
    assert iterator.get_state() == {"source": source.get_state(), "target": target.get_state()}
    assert iterator.get_state()["target"]["batches"] == 3


def test_set_state_with_other_stream_names_names_them():
    state = iter(zipped()).get_state()
    iterator = iter(zipped())
    with pytest.raises(ValueError, match=r"missing \['target'\], unexpected \[\]"):
        iterator.set_state({"source": state["source"]})
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['extra'\]"):
        iterator.set_state({**state, "extra": state["target"]})
    with pytest.raises(ValueError, match=r"missing \['source'\], unexpected \['src'\]"):
        iterator.set_state({"src": state["source"], "target": state["target"]})
    with pytest.raises(ValueError, match="must be a dict"):
        iterator.set_state([state["source"], state["target"]])


def test_metrics_are_prefixed_by_stream_name():
    iterator = iter(zipped())
    take(iterator, 5)
    source = iter(source_pipeline())
    target = iter(target_pipeline())
    take(source, 5)
    take(target, 5)
    expected = {f"source/{key}": value for key, value in source.metrics().items()}
    expected.update({f"target/{key}": value for key, value in target.metrics().items()})
    metrics = iterator.metrics()
    assert metrics == expected
    assert metrics["source/data/batches"] == metrics["target/data/batches"] == 5
    assert metrics["source/data/skipped"] == 0
    assert metrics["target/data/skipped"] == metrics["target/data/skipped/planted"] > 0


class Counting:
    """A minimal resumable stream: yields 0, 1, 2, ...; no metrics() and, optionally, no
    close()."""

    def __init__(self, with_close: bool = True, fail_close: bool = False):
        self.with_close, self.fail_close = with_close, fail_close
        self.iterators: list = []

    def __iter__(self):
        iterator = _CountingIterator(self.fail_close) if self.with_close else _NoClose()
        self.iterators.append(iterator)
        return iterator


class _NoClose:
    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        return {"x": np.int64(self.position - 1)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


class _CountingIterator(_NoClose):
    def __init__(self, fail_close: bool):
        super().__init__()
        self.fail_close, self.closed = fail_close, 0

    def close(self):
        self.closed += 1
        if self.fail_close:
            raise RuntimeError("close failed")


def test_close_closes_every_stream():
    iterator = iter(zipped())
    take(iterator, 2)
    iterator.close()
    for name in ("source", "target"):  # a closed grain iterator refuses to go on
        with pytest.raises(ValueError):
            next(iterator.iterators[name])

    # Streams without close() or metrics() are allowed; a failing close() does not stop the rest.
    failing, no_close, plain = Counting(fail_close=True), Counting(with_close=False), Counting()
    mixed = iter(zip_streams({"a": failing, "b": no_close, "c": plain}))
    assert next(mixed) == {"a": {"x": 0}, "b": {"x": 0}, "c": {"x": 0}}
    assert mixed.metrics() == {}
    with pytest.raises(RuntimeError, match="close failed"):
        mixed.close()
    assert failing.iterators[0].closed == plain.iterators[0].closed == 1


def test_mixed_streams_resume_and_metrics_only_where_present():
    streams = {"counting": Counting(), "source": source_pipeline()}
    first = iter(zip_streams(streams))
    take(first, 3)
    state = json.loads(json.dumps(first.get_state()))
    assert state["counting"] == {"position": 3}
    resumed = iter(zip_streams({"counting": Counting(), "source": source_pipeline()}))
    resumed.set_state(state)
    assert_same_tree(next(resumed), next(first))
    assert set(resumed.metrics()) == {f"source/{k}" for k in first.iterators["source"].metrics()}


def test_errors_for_no_streams_bad_names_and_unresumable_streams():
    with pytest.raises(ValueError, match="no streams"):
        zip_streams({})
    with pytest.raises(ValueError, match="non-empty str"):
        zip_streams({"": source_pipeline()})
    with pytest.raises(TypeError, match=r"'plain'.*get_state / set_state"):
        iter(zip_streams({"plain": [1, 2, 3]}))
    stream = zipped()
    assert isinstance(iter(stream), ZippedIterator)
    assert repr(stream) == "ZippedStream(['source', 'target'])"


def test_finite_streams_end_with_the_shortest():
    short = make_pipeline(
        domain_records(8, labelled=True, offset=0),
        seed=0,
        global_batch_size=4,
        transform=DomainTransform(),
        process_index=0,
        process_count=1,
        num_epochs=1,
    )
    batches = list(zip_streams({"short": short, "target": target_pipeline()}))
    assert len(batches) == 2
