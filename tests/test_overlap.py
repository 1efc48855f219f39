"""Threads ahead of and behind the caller: order kept, memory bounded, errors raised in the
caller, and the caller's own errors (Ctrl-C) stopping them."""

import threading
import time

import pytest

from semisynth.overlap import Ahead, Behind


def test_ahead_yields_every_item_in_order_and_runs_at_most_size_ahead():
    made = []

    def items():
        for i in range(50):
            made.append(i)
            yield i

    seen = []
    with Ahead(items(), size=2) as ahead:
        for item in ahead:
            time.sleep(0.002)
            # produced so far: what was taken, the two queued and the one being put
            assert len(made) <= len(seen) + 1 + 3
            seen.append(item)
    assert seen == list(range(50))


def test_an_error_in_the_producer_is_raised_in_the_caller():
    def items():
        yield 1
        raise ValueError("bad shard")

    with pytest.raises(ValueError, match="bad shard"), Ahead(items()) as ahead:
        assert list(ahead) == [1]


def test_an_error_in_the_caller_stops_the_producer():
    made, closed = [], threading.Event()

    def endless():
        try:
            while True:
                made.append(1)
                yield len(made)
        finally:
            closed.set()  # the generator is closed: its files would be

    ahead = Ahead(endless(), size=2)
    with pytest.raises(KeyboardInterrupt), ahead:
        for item in ahead:
            if item == 3:
                raise KeyboardInterrupt
    assert not ahead._thread.is_alive()
    assert closed.is_set()
    assert len(made) <= 3 + 3


def test_behind_handles_every_item_in_order():
    handled = []
    with Behind(handled.append, size=2) as behind:
        for i in range(100):
            behind.put(i)
        behind.finish()
    assert handled == list(range(100))


def test_an_error_in_the_consumer_is_raised_in_the_caller_without_a_hang():
    def handle(item):
        if item == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), Behind(handle, size=1) as behind:
        for i in range(1000):  # a put after the failure raises it
            behind.put(i)
        behind.finish()


def test_an_error_of_the_last_item_is_raised_by_finish():
    def handle(item):
        raise OSError(f"cannot write {item}")

    with pytest.raises(OSError, match="cannot write 0"), Behind(handle) as behind:
        behind.put(0)
        behind.finish()


def test_an_error_in_the_caller_drops_what_is_queued_and_ends_the_thread():
    handled, release = [], threading.Event()

    def slow(item):
        release.wait(5)
        handled.append(item)

    behind = Behind(slow, size=3)
    with pytest.raises(KeyboardInterrupt), behind:
        for i in range(4):
            behind.put(i)  # the thread holds item 0, three wait in the queue
        threading.Timer(0.3, release.set).start()  # item 0 ends after the block is left
        raise KeyboardInterrupt
    assert not behind._thread.is_alive()
    assert handled == [0]
