"""Resuming a checkpoint's data stream on another number of processes (``data.elastic``): the
global batches after the restore hold the uninterrupted stream's examples, none seen twice; with
skips, what is dropped is bounded; a later resume on the same count continues exactly; another
stream is refused."""

from __future__ import annotations

import json

import pytest

from jaxalign.data import elastic, zip_streams
from jaxalign.errors import ConfigError
from tests.data.test_pipeline import make

N, BATCH = 96, 8


def _processes(count, **kwargs):
    return [make(n=N, batch=BATCH, process_index=k, process_count=count, **kwargs)
            for k in range(count)]  # fmt: skip


def _run(pipelines, steps, iterators=None):
    """``(global batches as lists of (epoch, index), iterators)`` after ``steps`` more steps."""
    iterators = iterators or [iter(p) for p in pipelines]
    batches = []
    for _ in range(steps):
        parts = [next(it) for it in iterators]
        batches.append(sorted((int(e), int(i)) for p in parts
                              for e, i in zip(p["epoch"], p["index"], strict=True)))  # fmt: skip
    return batches, iterators


def _saved(iterators):
    """Every process's state, as a checkpoint holds them (through JSON)."""
    return json.loads(
        json.dumps({f"process_{k}": it.get_state() for k, it in enumerate(iterators)})
    )


@pytest.mark.parametrize("saved_count, restored_count", [(2, 4), (4, 1), (1, 2), (2, 2)])
def test_the_global_batches_continue_without_skips(saved_count, restored_count):
    reference, _ = _run(_processes(saved_count, skip_every=0), 10)  # crosses epoch 0 -> 1
    before, iterators = _run(_processes(saved_count, skip_every=0), 4)
    saved = _saved(iterators)
    resumed, notes = [], []
    for k, pipeline in enumerate(_processes(restored_count, skip_every=0)):
        iterator, note = elastic.resume(pipeline, saved, k)
        assert iterator.batches == 4
        resumed.append(iterator)
        notes.append(note)
    after, resumed = _run(None, 6, resumed)
    assert before + after == reference  # the same examples per global batch, none twice
    if saved_count == restored_count:
        assert notes == [""] * restored_count
    else:
        assert f"restart at stream position {4 * BATCH}" in notes[0], notes[0]
        # A later resume on the new count continues exactly (the restart position is kept).
        again = _processes(restored_count, skip_every=0)
        more, _ = _run(None, 2, [elastic.resume(p, _saved(resumed), k)[0]
                                 for k, p in enumerate(again)])  # fmt: skip
        reference, _ = _run(_processes(saved_count, skip_every=0), 12)
        assert more == reference[10:]


def test_skips_drop_a_bounded_number_of_examples_and_repeat_none():
    before, iterators = _run(_processes(2, skip_every=5), 3)
    saved = _saved(iterators)
    consumed = [elastic.consumed(state) for state in saved.values()]
    resumed = [elastic.resume(p, saved, k)[0] for k, p in enumerate(_processes(4, skip_every=5))]
    after, _ = _run(None, 4, resumed)
    seen = [x for batch in before + after for x in batch]
    assert len(seen) == len(set(seen))  # none twice
    restart = elastic.restart_position(list(saved.values()))
    assert restart == 2 * max(consumed)
    # The positions below the restart that no process read: at most 2 * (max - min) of them.
    read = sum(consumed)
    assert restart - read <= 2 * (max(consumed) - min(consumed))


def test_zipped_streams_resume_each_stream():
    def streams(count):
        return [zip_streams({"a": make(n=N, process_index=k, process_count=count, skip_every=0),
                             "b": make(n=40, seed=1, process_index=k, process_count=count,
                                       skip_every=0)})
                for k in range(count)]  # fmt: skip

    iterators = [iter(s) for s in streams(2)]
    for _ in range(3):
        [next(it) for it in iterators]
    saved = _saved(iterators)
    resumed = [elastic.resume(s, saved, k) for k, s in enumerate(streams(1))]
    iterator, note = resumed[0]
    assert "a 24, b 24" in note
    reference = [iter(s) for s in streams(1)]
    for _ in range(3):
        next(reference[0])
    for _ in range(2):
        got, want = next(iterator), next(reference[0])
        for name in ("a", "b"):
            assert sorted(got[name]["index"]) == sorted(want[name]["index"])


def test_another_stream_is_refused():
    _, iterators = _run(_processes(2, skip_every=0), 1)
    saved = _saved(iterators)
    other = make(n=N + 1, batch=BATCH, process_index=0, process_count=1, skip_every=0)
    with pytest.raises(ConfigError, match=r"num_records=96, this run's num_records=97"):
        elastic.resume(other, saved, 0)
    with pytest.raises(ConfigError, match="incomplete"):
        elastic.resume(other, {"process_1": saved["process_1"]}, 0)
