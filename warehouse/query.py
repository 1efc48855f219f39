"""``semisynth query``: one read-only SQL statement over the warehouse, in a sandbox.

The warehouse is opened read-only with DuckDB's external access off (no ATTACH of other
files, no COPY TO, no read_csv/read_text/glob of the machine, no INSTALL or LOAD) and its
configuration locked (no SET or PRAGMA that changes the session), with a memory limit.
Only one statement is accepted. The statement runs in a worker thread so that a time
limit and Ctrl-C can interrupt it (``DuckDBPyConnection.interrupt``).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import duckdb
import pandas as pd

DEFAULT_TIMEOUT_S = 60.0
SANDBOX = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "memory_limit": "2GB",
    "lock_configuration": True,  # last: nothing after it may change the settings above
}


class QueryError(ValueError):
    """The statement was refused or failed (exit code 2)."""


class QueryTimeout(QueryError):
    """The statement ran past its time limit and was interrupted."""


def sandboxed_connection(path: Path) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    if not path.exists():
        raise QueryError(f"no warehouse at {path}: run a flow first (semisynth run/demo)")
    return duckdb.connect(str(path), read_only=True, config=dict(SANDBOX))


def one_statement(sql: str) -> str:
    """``sql`` if it is exactly one statement; QueryError otherwise."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"cannot parse the query: {exc}") from exc
    if len(statements) != 1:
        raise QueryError(f"one SQL statement at a time, got {len(statements)}")
    return sql


def _interrupt(con: duckdb.DuckDBPyConnection, worker: threading.Thread) -> None:
    """Stop the worker's statement: DuckDB refuses a call on a connection that is busy with
    another call for a moment (between statements' phases), so ask again until it stops."""
    while worker.is_alive():
        try:
            con.interrupt()
        except duckdb.Error:
            pass
        worker.join(0.05)


def run_query(path: Path, sql: str, timeout: float = DEFAULT_TIMEOUT_S) -> pd.DataFrame:
    """The statement's rows. Raises QueryError (refused or failed), QueryTimeout (past
    ``timeout`` seconds) or KeyboardInterrupt (Ctrl-C), each after interrupting DuckDB."""
    if timeout <= 0:
        raise QueryError(f"the time limit must be positive, got {timeout}")
    sql = one_statement(sql)
    con = sandboxed_connection(path)
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["frame"] = con.execute(sql).df()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="semisynth-query", daemon=True)
    try:
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            _interrupt(con, worker)
            raise QueryTimeout(f"the query ran past its time limit of {timeout:g} s and was "
                               "stopped (--timeout sets it)")
    except KeyboardInterrupt:
        _interrupt(con, worker)
        raise
    finally:
        if not worker.is_alive():
            # right after an interrupt DuckDB may still call the connection busy; it is a
            # read-only connection that goes with the process (or the garbage collector)
            with contextlib.suppress(duckdb.Error):
                con.close()
    if "error" in outcome:
        raise QueryError(str(outcome["error"])) from outcome["error"]
    return outcome["frame"]
