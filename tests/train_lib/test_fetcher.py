"""The loop's batch fetcher: batches and errors come through, a stop request ends a wait that
would never end, slow data is reported once."""

import threading

import pytest

from jaxalign.train_lib.fetcher import Fetcher, FetchInterrupted


def test_batches_and_errors_come_through_in_order():
    fetcher = Fetcher(iter([1, 2]))
    assert [fetcher.next(lambda: False), fetcher.next(lambda: False)] == [1, 2]
    with pytest.raises(StopIteration):
        fetcher.next(lambda: False)
    fetcher.close()


def test_a_stop_request_ends_a_wait_on_a_stuck_stream_and_slow_data_is_reported_once():
    release = threading.Event()

    def stuck():
        release.wait()
        yield "late"

    fetcher = Fetcher(stuck())
    slow, polls = [], []

    def should_stop():
        polls.append(1)
        return len(polls) >= 8

    with pytest.raises(FetchInterrupted):
        fetcher.next(should_stop, slow_after_s=0.05, on_slow=slow.append, poll_s=0.02)
    assert len(slow) == 1 and slow[0] > 0.05
    release.set()  # the abandoned fetch ends; asking again takes its answer, not a new one
    assert fetcher.next(lambda: False) == "late"
    fetcher.close()
