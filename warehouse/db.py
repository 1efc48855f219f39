"""The DuckDB warehouse: one file under the data root, one writer at a time (the run that
holds the data root's lock, ``warehouse.lock``).

Connections are opened per operation and closed at once, so that readers (the `query`
command, the gate reading the metrics it hands to Great Expectations) rarely meet a held
file lock. When they do (DuckDB locks the file for every connection of another process,
read-only ones included: a long `query` blocks every writer), opening retries for up to
``LOCK_WAIT_S`` seconds and then raises WarehouseLocked. Each write is one transaction:
a process killed during it leaves none of its rows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd

from semisynth.errors import LockHeld

TABLES = (
    "runs", "corpora", "shards", "quarantine", "doc_scores", "edits", "metrics",
    "ppl_histograms", "ngram_top", "validations", "releases", "release_intents",
    "experiment_results", "experiment_arms", "pushes",
)
# Longer than a `semisynth query`'s default time limit (60 s): a writer outlasts a reader.
LOCK_WAIT_S = 90.0
_RETRY_FIRST_S, _RETRY_MAX_S = 0.05, 1.0


class WarehouseLocked(LockHeld):
    """Another process kept the warehouse file locked past the wait (exit code 3)."""


def now() -> datetime:
    """The warehouse's timestamps: UTC, without a timezone (DuckDB TIMESTAMP)."""
    return datetime.now(UTC).replace(tzinfo=None)


def warehouse_path(root: Path) -> Path:
    return Path(root) / "warehouse.duckdb"


def _held_by_another_process(exc: duckdb.Error) -> bool:
    return isinstance(exc, duckdb.IOException) and "Could not set lock" in str(exc)


def open_connection(path: Path, read_only: bool = False, wait_s: float = LOCK_WAIT_S,
                    **kwargs) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect`` that waits, with growing pauses up to ``wait_s`` seconds, while
    another process holds the file; then WarehouseLocked. ``kwargs`` go to duckdb."""
    deadline = time.monotonic() + wait_s
    pause = _RETRY_FIRST_S
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, **kwargs)
        except duckdb.Error as exc:
            if not _held_by_another_process(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise WarehouseLocked(
                    f"the warehouse {path} stayed locked by another process for {wait_s:g} s "
                    f"(a long `semisynth query`, or a process outside semisynth): {exc}"
                ) from exc
        time.sleep(pause)
        pause = min(2 * pause, _RETRY_MAX_S)


@contextlib.contextmanager
def connect(path: Path, read_only: bool = False,
            wait_s: float = LOCK_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: run a flow first (semisynth run/demo)")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = open_connection(path, read_only=read_only, wait_s=wait_s)
    try:
        yield con
    finally:
        con.close()


def init(path: Path) -> Path:
    schema = resources.files("semisynth.warehouse").joinpath("schema.sql").read_text()
    with connect(path) as con:
        con.execute(schema)
    return path


def insert(path: Path, table: str, rows: pd.DataFrame | list[dict]) -> int:
    """Append rows to a table by column name; columns the frame lacks stay NULL."""
    return insert_tables(path, {table: rows})[table]


@contextlib.contextmanager
def transaction(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection whose statements in the block are one transaction: committed when the
    block ends, rolled back on an error (a kill leaves none of them either)."""
    with connect(path) as con:
        con.begin()
        try:
            yield con
            con.commit()
        except BaseException:
            con.rollback()
            raise


def append_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> int:
    """Append a frame's rows to ``table`` by column name (columns it lacks stay NULL)."""
    if frame.empty:
        return 0
    cols = ", ".join(f'"{c}"' for c in frame.columns)
    con.register("incoming", frame)
    # no unregister on an error: the failed statement aborts the transaction, an unregister
    # would then raise in its place and hide why; the connection's end drops the view
    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming")
    con.unregister("incoming")
    return len(frame)


def insert_tables(path: Path, tables: Mapping[str, pd.DataFrame | list[dict]]) -> dict[str, int]:
    """Append rows to several tables in one transaction: all of them become visible
    together, or (on an error, or a kill) none. Returns the rows added per table."""
    unknown = set(tables) - set(TABLES)
    if unknown:
        raise ValueError(f"unknown warehouse table(s) {sorted(unknown)}")
    frames = {t: rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
              for t, rows in tables.items()}
    if all(f.empty for f in frames.values()):
        return {t: 0 for t in frames}
    with transaction(path) as con:
        return {table: append_frame(con, table, frame) for table, frame in frames.items()}


def execute(path: Path, sql: str, params: list | None = None) -> None:
    with connect(path) as con:
        con.execute(sql, params or [])


def query(path: Path, sql: str, params: list | None = None, read_only: bool = True) -> pd.DataFrame:
    with connect(path, read_only=read_only) as con:
        return con.execute(sql, params or []).df()
