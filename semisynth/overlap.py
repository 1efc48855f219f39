"""Host work overlapped with the caller's: a thread that runs ahead of it (preparing the
next items) and one that runs behind it (finishing the last ones), so that a device the
caller drives does not wait for the host.

Both queues are bounded, so memory stays bounded: a producer runs at most ``size`` items
ahead, a consumer lags at most ``size`` behind. An exception in a thread is raised in the
caller (the next time it takes or gives an item, or when it finishes), never lost; an
exception in the caller (Ctrl-C: KeyboardInterrupt reaches the main thread only) stops the
threads before it propagates, so nothing writes after the caller has given up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
POLL_S = 0.1  # how often a blocked side looks whether the other one stopped or failed
_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Ahead(Generic[T]):
    """Iterate ``items`` on a thread, ``size`` items ahead of the caller:

        with Ahead(read_and_prepare(), size=2) as prepared:
            for item in prepared: ...
    """

    def __init__(self, items: Iterable[T], size: int = 2, name: str = "ahead"):
        self._items, self._queue = items, queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        items = iter(self._items)
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as error:  # raised in the caller: nothing is lost
            self._put(_Failure(error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Ahead[T]:
        self._thread.start()
        return self

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Behind(Generic[T]):
    """Hand items to ``handle`` on a thread, at most ``size`` behind the caller:

        with Behind(write, size=2) as writer:
            for item in work: writer.put(item)
            writer.finish()  # waits for the last item; raises the thread's error

    Leaving the block without ``finish`` (an exception) drops what is still queued."""

    def __init__(self, handle: Callable[[T], None], size: int = 2, name: str = "behind"):
        self._handle, self._queue = handle, queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            try:
                self._handle(item)
            except BaseException as error:
                self._failure = error
                return

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def put(self, item: T) -> None:
        while True:
            alive = self._thread.is_alive()
            self._raise_failure()  # set before the thread ends: checked after is_alive
            if not alive:
                raise RuntimeError(f"{self._thread.name} stopped before its last item")
            try:
                self._queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        self.put(_END)
        self._thread.join()
        self._raise_failure()

    def __enter__(self) -> Behind[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
