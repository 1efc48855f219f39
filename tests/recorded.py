"""A ``semisynth.progress.Progress`` that keeps every report, for tests of what a long step
reports."""

from __future__ import annotations


class Recorded:
    def __init__(self, on_advance=None) -> None:
        self.calls: list[tuple[int, int, str | None]] = []
        self._on_advance = on_advance

    def advance(self, n: int = 1, also: int = 0, detail: str | None = None) -> None:
        self.calls.append((n, also, detail))
        if self._on_advance:
            self._on_advance(self)

    @property
    def done(self) -> int:
        return sum(n for n, _, _ in self.calls)

    @property
    def also(self) -> list[int]:
        """The second counts reported, in order (zeros left out)."""
        return [a for _, a, _ in self.calls if a]
