"""Ctrl-C as a terminal delivers it, whatever shell started the tests.

A non-interactive shell starts a background job (`make test &`, `nohup ... &`, CI runners)
with SIGINT ignored, and a child process inherits that: Python then never installs its
KeyboardInterrupt handler, and a test that sends SIGINT would see it ignored."""

from __future__ import annotations

import contextlib
import signal


def default_sigint() -> None:
    """``preexec_fn`` of a child that a test stops with SIGINT: a terminal's SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def sigint_raises_keyboard_interrupt():
    """In this process, for the block: SIGINT raises KeyboardInterrupt, as under a terminal."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
