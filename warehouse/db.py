"""The DuckDB warehouse: one file under the data root, one writer (the flow process).

Connections are opened per operation and closed at once, so that readers (the `query`
command, the gate reading the metrics it hands to Great Expectations) never meet a held
write lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd

TABLES = (
    "runs", "corpora", "shards", "quarantine", "doc_scores", "edits", "metrics",
    "ppl_histograms", "ngram_top", "validations", "releases", "experiment_results",
    "experiment_arms",
)


def now() -> datetime:
    """The warehouse's timestamps: UTC, without a timezone (DuckDB TIMESTAMP)."""
    return datetime.now(UTC).replace(tzinfo=None)


def warehouse_path(root: Path) -> Path:
    return Path(root) / "warehouse.duckdb"


@contextlib.contextmanager
def connect(path: Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: run a flow first (semisynth run/demo)")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
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
    if table not in TABLES:
        raise ValueError(f"unknown warehouse table {table!r}")
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if frame.empty:
        return 0
    with connect(path) as con:
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        con.register("incoming", frame)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming")
        con.unregister("incoming")
    return len(frame)


def execute(path: Path, sql: str, params: list | None = None) -> None:
    with connect(path) as con:
        con.execute(sql, params or [])


def query(path: Path, sql: str, params: list | None = None, read_only: bool = True) -> pd.DataFrame:
    with connect(path, read_only=read_only) as con:
        return con.execute(sql, params or []).df()
