"""Progress of a long step, with its rate and ETA: the one way semisynth's long steps report.

Every long step (ingest, score+edit, generation, training, a release's copy or check)
takes ``progress: Progress | None`` and calls ``progress.advance(n, also=..., detail=...)``
as it goes; its docstring says what ``n`` and ``also`` count. A ``Bar`` is a ``Progress``:
``progress()`` draws one for a person, ``logged()`` writes one to a log (the flow's tasks).

On a terminal: a rich bar on stderr. Elsewhere (a log file, CI, a pipe): plain lines, one
every ``PLAIN_EVERY_S`` seconds and one when the step ends, so logs stay readable.

    with progress("scored", total=len(docs), unit="documents", also="tokens") as bar:
        for batch in batches:
            ...
            bar.advance(len(batch), also=tokens_in_batch)

``Bar.advance`` is cheap (it draws only when its interval has passed): callers may advance it
once per row.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

PLAIN_EVERY_S = 10.0
BAR_EVERY_S = 0.1


class Progress(Protocol):
    """What a long step reports to. ``n``: items done since the last call, in the step's
    unit (rows, documents, bytes, steps); ``also``: its second count where it has one
    (tokens); ``detail``: its latest state, shown after the counts (a training loss)."""

    def advance(self, n: int = 1, also: int = 0, detail: str | None = None) -> None: ...


def duration(seconds: float) -> str:
    """``seconds`` as ``42 s``, ``3 min 05 s`` or ``2 h 07 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def rate(count: int, seconds: float) -> str:
    """``count / seconds`` with a decimal only where it matters: ``8.1``, ``2,300``."""
    per_s = count / seconds
    return f"{per_s:.1f}" if per_s < 10 else f"{per_s:,.0f}"


class Bar:
    """One step's count in ``unit`` (the bar, its rate and its ETA when ``total`` is known),
    and optionally a second count in ``also`` with its own rate (tokens while documents
    are counted), with ``also_total`` the total the ETA is taken from (generation: documents
    end late, tokens come steadily). ``show`` draws it; it is called at most every ``every``
    seconds. A ``Progress``."""

    def __init__(self, label: str, total: int | None, unit: str, also: str | None,
                 show: Callable[[Bar], None], every: float, also_total: int | None = None):
        self.label, self.total, self.unit, self.also = label, total, unit, also
        self.also_total = also_total
        self.done = self.also_done = 0
        self.detail: str | None = None
        self.started = self._shown_at = time.monotonic()
        self._show, self._every = show, every

    def advance(self, n: int = 1, also: int = 0, detail: str | None = None) -> None:
        self.done += n
        self.also_done += also
        if detail is not None:
            self.detail = detail
        now = time.monotonic()
        if now - self._shown_at >= self._every:
            self._shown_at = now
            self._show(self)

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def eta(self) -> float | None:
        """Seconds left at the average rate so far; None without a total or a rate."""
        done, total = self.fraction()
        if total is None or done == 0:
            return None
        return max(total - done, 0) * self.elapsed() / done

    def fraction(self) -> tuple[int, int | None]:
        """(done, total) of the count the ETA is taken from: what a drawn bar fills."""
        if self.also_total is not None:
            return self.also_done, self.also_total
        return self.done, self.total

    def counts(self) -> str:
        """``120/500 documents, 8.1 documents/s; 34,000 tokens, 2,300 tokens/s``"""
        done = f"{self.done:,}/{self.total:,}" if self.total is not None else f"{self.done:,}"
        text = f"{done} {self.unit}, {rate(self.done, self.elapsed())} {self.unit}/s"
        if self.also:
            also_done = (f"{self.also_done:,}/{self.also_total:,}" if self.also_total is not None
                         else f"{self.also_done:,}")
            text += f"; {also_done} {self.also}, {rate(self.also_done, self.elapsed())} {self.also}/s"
        if self.detail:
            text += f", {self.detail}"
        return text

    def line(self, finished: bool = False) -> str:
        if finished:
            return f"{self.label}: {self.counts()}, done in {duration(self.elapsed())}"
        eta = self.eta()
        return f"{self.label}: {self.counts()}" + (f", ETA {duration(eta)}" if eta is not None else "")


@contextmanager
def progress(label: str, total: int | None = None, unit: str = "rows", also: str | None = None,
             stream: TextIO | None = None, also_total: int | None = None) -> Iterator[Bar]:
    """A Bar for the block; drawn on ``stream`` (default: stderr) as a rich bar when it is a
    terminal, else as plain lines. The last state is drawn when the block ends."""
    stream = stream or sys.stderr
    if stream.isatty():
        with _rich_bar(label, total, unit, also, also_total, stream) as bar:
            yield bar
        return
    with logged(label, lambda line: print(line, file=stream, flush=True), total=total,
                unit=unit, also=also, also_total=also_total, every=PLAIN_EVERY_S) as bar:
        yield bar


@contextmanager
def logged(label: str, log: Callable[[str], None], total: int | None = None, unit: str = "rows",
           also: str | None = None, also_total: int | None = None,
           every: float = 30.0) -> Iterator[Bar]:
    """A Bar for the block that writes its line to ``log`` (a logger's ``info``) at most
    every ``every`` seconds, and its final line when the block ends (failed or not) having
    reported something: a block with nothing to do (a shard whose scores are cached) says
    so in its own words, not in a line of zeros."""
    bar = Bar(label, total, unit, also, lambda b: log(b.line()), every, also_total)
    try:
        yield bar
    finally:
        if bar.done or bar.also_done or bar.detail:
            log(bar.line(finished=True))


@contextmanager
def _rich_bar(label: str, total: int | None, unit: str, also: str | None,
              also_total: int | None, stream: TextIO) -> Iterator[Bar]:
    # lazy: rich; logs and workers, which get plain lines, need not load it
    from rich.console import Console
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    filled_total = also_total if also_total is not None else total
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}")]
    if filled_total is not None:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    with RichProgress(*columns, console=Console(file=stream)) as bars:
        task = bars.add_task(label, total=filled_total, counts="")

        def show(bar: Bar) -> None:
            bars.update(task, completed=bar.fraction()[0], counts=bar.counts())

        bar = Bar(label, total, unit, also, show, BAR_EVERY_S, also_total)
        try:
            yield bar
        finally:
            show(bar)
