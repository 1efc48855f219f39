"""``semisynth query``: one read-only SQL statement over the warehouse, in a sandbox whose
limits hold.

The sandbox: the warehouse is opened read-only with DuckDB's external access off (no ATTACH
of other files, no COPY TO, no read_csv/read_text/glob of the machine, no INSTALL or LOAD),
no temporary directory (nothing spills to disk, so a kill leaves no file behind; a statement
that needs more memory than it has is refused) and its configuration locked (no SET or
PRAGMA that changes the session). Only one statement is accepted.

The limits (``Limits``, the command's options):

- time: ``--timeout`` seconds from the command's start cover all of it: waiting for a
  writer, running, fetching and printing. The command runs the statement in a child process
  (``python -m semisynth.warehouse.query``) and kills it at the deadline.
- memory: the child's data segment is capped at ``--max-memory`` (``RLIMIT_DATA``, which
  since Linux 4.7 counts every private writable mapping: malloc's heap, DuckDB's buffers and
  Python's objects alike). DuckDB's own ``memory_limit`` is half of it, so that DuckDB
  refuses what it manages (hash tables, sorts, temporary tables) with its own message before
  the process limit stops what it does not count (a string ``repeat`` builds, rows turned
  into Python objects). Either way the statement is refused.
- result: rows are read as a stream of Arrow record batches and kept up to ``--max-rows``
  rows and ``--max-bytes`` (their Arrow size), so no larger result is turned into Python
  objects or printed; what is cut is said on stderr.

A reader waits for a writer: DuckDB locks the file for a process that writes it, and opening
retries until the deadline, then WarehouseLocked (exit 3).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import json
import math
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import duckdb
import pandas as pd
import pyarrow as pa

from semisynth.errors import LockHeld, QueryError, QueryTimeout
from semisynth.warehouse import db

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 64 * 10**6
DEFAULT_MAX_MEMORY = 2 * 10**9
# The child's own floor: with DuckDB, pandas and pyarrow imported and the warehouse open, it
# holds about 200 MB of data segment before it reads a row (measured on 2 cores; DuckDB's
# thread stacks add 8 MB a core)
MIN_MEMORY = 512 * 10**6
# `--format table` pads every row of a column to its widest value: one long value in many
# rows would multiply the output, so the table cuts values (csv and json print them whole).
TABLE_MAX_COLWIDTH = 1000
_BATCH_ROWS = 2048  # DuckDB's vector size: it produces rows this many at a time anyway
# The command kills the child at its deadline. The child stops waiting for a writer and
# interrupts its statement this much earlier, so that it can say which of the two it was;
# and it ends itself this much after the deadline, should the command have died first
# without taking it along (Linux does that: _die_with_parent).
_CHILD_MARGIN_S = 0.25
_CHILD_GRACE_S = 1.0
_STDERR_KEEP = 64 * 1024
EXIT_REFUSED, EXIT_LOCKED, EXIT_CRASH = 2, 3, 3


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, option: str) -> int:
    """Bytes of a size such as ``64MB``, ``2GB``, ``512MiB`` or ``1000000`` (KB, MB, GB:
    powers of 1000, as DuckDB reads them; KiB, MiB, GiB: of 1024)."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise QueryError(f"{option} must be a size such as 64MB, 2GB or 512MiB, got {text!r}")
    return int(float(match[1]) * _UNITS[(match[2] or "b").lower()])


def size_text(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Limits:
    """What one query may take; a value out of range is refused naming its option."""

    timeout: float = DEFAULT_TIMEOUT_S
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_memory: int = DEFAULT_MAX_MEMORY

    def __post_init__(self) -> None:
        # nan compares false with everything and inf overflows a thread's join: neither is a
        # time limit
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise QueryError("--timeout must be a finite number of seconds above 0, "
                             f"got {self.timeout:g}")
        if self.max_rows < 1:
            raise QueryError(f"--max-rows must be at least 1, got {self.max_rows}")
        if self.max_bytes < 1:
            raise QueryError(f"--max-bytes must be at least 1 byte, got {self.max_bytes}")
        if self.max_memory < MIN_MEMORY:
            raise QueryError(f"--max-memory must be at least {size_text(MIN_MEMORY)} (the query "
                             f"process itself needs that much), got {size_text(self.max_memory)}")

    def timeout_error(self) -> QueryTimeout:
        return QueryTimeout(f"the query ran past its time limit of {self.timeout:g} s and was "
                            "stopped (--timeout sets it)")

    def memory_error(self, detail: object) -> QueryError:
        # DuckDB's advice after its first line (SET threads, SET memory_limit, a temporary
        # directory) is for sessions that may change their settings; this one may not
        detail = str(detail).strip().splitlines()[0] if str(detail).strip() else type(detail).__name__
        return QueryError(
            f"the query needs more memory than its limit of {size_text(self.max_memory)} "
            f"(--max-memory sets it; a LIMIT, or fewer or narrower columns, need less): {detail}")


@dataclass
class Result:
    """The rows kept of a statement's result; ``seen`` rows came out of DuckDB before the
    fetch stopped, ``cut_by`` names the option that stopped it (None: every row is kept)."""

    frame: pd.DataFrame
    seen: int
    cut_by: str | None

    def notice(self, limits: Limits) -> str | None:
        """The line that says what was cut, for stderr; None when nothing was."""
        if self.cut_by is None:
            return None
        shown = f"first {len(self.frame):,} rows of {self.seen:,}+ shown"
        if self.cut_by == "--max-rows":
            return f"{shown}: --max-rows is {limits.max_rows:,} (--max-rows N to change)"
        return (f"{shown}: the next row would pass --max-bytes {size_text(limits.max_bytes)} "
                "(--max-bytes SIZE to change)")


def sandbox_config(max_memory: int) -> dict:
    return {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "memory_limit": f"{max_memory // 2 // 1000}KB",
        "temp_directory": "",  # no spill file: a kill would leave it behind
        "lock_configuration": True,  # last: nothing after it may change the settings above
    }


def sandboxed_connection(path: Path, max_memory: int = DEFAULT_MAX_MEMORY,
                         wait_s: float = 0.0) -> duckdb.DuckDBPyConnection:
    """The warehouse, read-only in the sandbox; waits up to ``wait_s`` seconds while a writer
    holds it, then WarehouseLocked."""
    path = Path(path)
    if not path.exists():
        raise QueryError(f"no warehouse at {path}: run a flow first (semisynth run/demo)")
    try:
        return db.open_connection(path, read_only=True, wait_s=max(wait_s, 0.0),
                                  config=sandbox_config(max_memory))
    except db.WarehouseLocked as exc:
        raise db.WarehouseLocked(
            f"the warehouse {path} stayed locked by a writer for {max(wait_s, 0.0):.3g} s, "
            "as long as the query's --timeout allowed (a run, or a command that stores "
            f"results; a longer --timeout waits longer): {exc.__cause__}") from exc
    except duckdb.Error as exc:
        raise QueryError(f"cannot open the warehouse {path}: {exc}") from exc


def one_statement(sql: str) -> str:
    """``sql`` if it is exactly one statement; QueryError otherwise."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"cannot parse the query: {exc}") from exc
    if len(statements) != 1:
        raise QueryError(f"one SQL statement at a time, got {len(statements)}")
    return sql


def _rows_within(batch: pa.RecordBatch, room: int) -> int:
    """The most leading rows of ``batch`` whose Arrow size is at most ``room`` bytes."""
    if batch.nbytes <= room:
        return batch.num_rows
    low, high = 0, batch.num_rows  # slice(0, low) fits, slice(0, high) does not
    while high - low > 1:
        mid = (low + high) // 2
        if batch.slice(0, mid).nbytes <= room:
            low = mid
        else:
            high = mid
    return low


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, limits: Limits) -> Result:
    """Run ``sql`` and keep its leading rows within the row and byte limits, reading DuckDB's
    result batch by batch: the rest is never fetched."""
    relation = con.sql(sql)
    if relation is None:  # a statement without rows
        return Result(pd.DataFrame(), 0, None)
    reader = relation.to_arrow_reader(_BATCH_ROWS)
    kept: list[pa.RecordBatch] = []
    rows = size = seen = 0
    cut_by = None
    for batch in reader:
        seen += batch.num_rows
        room = limits.max_rows - rows
        part = batch.slice(0, room)
        fits = _rows_within(part, limits.max_bytes - size)
        if fits:
            kept.append(part.slice(0, fits))
            rows += fits
            size += kept[-1].nbytes
        if fits < batch.num_rows:
            cut_by = "--max-rows" if fits == room else "--max-bytes"
            break
    schema = reader.schema
    reader.close()
    table = pa.Table.from_batches(kept, schema=schema)
    # DuckDB's own conversion, as the command printed before: DECIMAL as float, DATE as a
    # timestamp, ...; on a connection of its own, which reads nothing but this table
    with duckdb.connect(config={"threads": 1}) as local:
        frame = local.from_arrow(table).df()
    return Result(frame, seen, cut_by)


def _interrupt(con: duckdb.DuckDBPyConnection, worker: threading.Thread) -> None:
    """Stop the worker's statement: DuckDB refuses a call on a connection that is busy with
    another call for a moment (between statements' phases), so ask again until it stops."""
    while worker.is_alive():
        try:
            con.interrupt()
        except duckdb.Error:
            pass
        worker.join(0.05)


def _out_of_memory(error: BaseException | None) -> bool:
    if isinstance(error, duckdb.OutOfMemoryException | MemoryError | pa.ArrowMemoryError):
        return True
    # DuckDB's error while the Arrow stream reads it reaches Python as pyarrow's OSError,
    # with DuckDB's message
    return isinstance(error, OSError | duckdb.Error) and "Out of Memory Error" in str(error)


def run_query(path: Path, sql: str, limits: Limits | None = None,
              deadline: float | None = None) -> Result:
    """The statement's rows, within ``limits`` (rows and bytes; time: ``limits.timeout``
    seconds, or until ``deadline`` on the ``time.monotonic`` clock). Raises QueryError
    (refused or failed), QueryTimeout (past the time limit), WarehouseLocked (a writer held
    the warehouse past the time limit) or KeyboardInterrupt (Ctrl-C), each after
    interrupting DuckDB. The memory limit holds for DuckDB's part only: the process's own
    cap is set by ``command``'s child."""
    limits = limits or Limits()
    if deadline is None:
        deadline = time.monotonic() + limits.timeout
    sql = one_statement(sql)
    con = sandboxed_connection(path, limits.max_memory, wait_s=deadline - time.monotonic())
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = _fetch(con, sql, limits)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="semisynth-query", daemon=True)
    try:
        worker.start()
        worker.join(max(deadline - time.monotonic(), 0.0))
        if worker.is_alive():
            _interrupt(con, worker)
            raise limits.timeout_error()
    except KeyboardInterrupt:
        _interrupt(con, worker)
        raise
    finally:
        if not worker.is_alive():
            # right after an interrupt DuckDB may still call the connection busy; it is a
            # read-only connection that goes with the process (or the garbage collector)
            with contextlib.suppress(duckdb.Error):
                con.close()
    error = outcome.get("error")
    if _out_of_memory(error):
        raise limits.memory_error(error) from error
    if error is not None:
        raise QueryError(str(error)) from error
    return outcome["result"]


def write_result(result: Result, fmt: str, out: TextIO) -> None:
    frame = result.frame
    if fmt == "csv":
        frame.to_csv(out, index=False)
    elif fmt == "json":
        out.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        out.write((frame.to_string(index=False, max_colwidth=TABLE_MAX_COLWIDTH)
                   if len(frame) else "(no rows)") + "\n")


# The command: a supervising parent, and the child that runs the statement


def command(path: Path, sql: str, fmt: str, limits: Limits,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``semisynth query``: run ``sql`` in a child process under ``limits``, its rows to
    ``out`` in ``fmt`` (table, csv, json), what was cut and its errors to ``err``. Returns
    the exit code: 0, 2 (refused, failed, out of memory or time) or 3 (a writer held the
    warehouse past the time limit). Raises QueryError for what it refuses before the child
    starts, QueryTimeout past the deadline, KeyboardInterrupt on Ctrl-C (the child killed)."""
    out = out or sys.stdout
    err = err or sys.stderr
    deadline = time.monotonic() + limits.timeout
    one_statement(sql)
    if not Path(path).exists():
        raise QueryError(f"no warehouse at {path}: run a flow first (semisynth run/demo)")
    try:  # a real file: the child writes to it, and a blocked reader of it stalls only the child
        stdout = out.fileno()
        out.flush()
    except (AttributeError, OSError, ValueError):  # a stream in memory (a test's capture)
        stdout = subprocess.PIPE
    # Writable memory reserved but never used counts against the cap as well: BLAS's buffers
    # per core (numpy's; the child computes nothing), and the 1 GiB that pyarrow's default
    # pool (mimalloc) reserves at its first allocation (measured: malloc's pool takes what
    # it uses)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    child = subprocess.Popen(
        [sys.executable, "-m", "semisynth.warehouse.query"], stdin=subprocess.PIPE,
        stdout=stdout, stderr=subprocess.PIPE, env=env)
    try:
        request = {"path": str(path), "sql": sql, "format": fmt, "deadline": deadline,
                   "parent": os.getpid(), "limits": asdict(limits)}
        child.stdin.write(json.dumps(request).encode())
        child.stdin.close()
        messages = _supervise(child, deadline, out if stdout == subprocess.PIPE else None)
        if messages is None:
            raise limits.timeout_error()
    except (QueryTimeout, KeyboardInterrupt):
        child.kill()
        child.wait()
        raise
    except BrokenPipeError:  # the child died before it read its request: said below
        messages = child.stderr.read()[-_STDERR_KEEP:]
        child.wait()
    finally:
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    text = messages.decode("utf-8", "replace")
    if text:
        err.write(text)
        err.flush()
    code = child.returncode
    if code < 0:
        # our kills raise above; a signal that ends the child otherwise is, under its
        # memory limit, an allocation refused where no error could be raised (an abort in
        # C++), or the kernel's OOM killer
        name = signal.Signals(-code).name
        raise limits.memory_error(f"the query process was ended by {name}")
    return code


def _supervise(child: subprocess.Popen, deadline: float, out: TextIO | None) -> bytes | None:
    """Wait for the child until ``deadline``, passing its stdout on to ``out`` when it writes
    to a pipe; returns the end of its stderr, or None when the deadline came first."""
    streams = {child.stderr.fileno(): None}
    if out is not None:
        streams[child.stdout.fileno()] = codecs.getincrementaldecoder("utf-8")("replace")
    messages = b""
    while streams:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select(list(streams), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            decoder = streams[fd]
            if decoder is None:
                messages = (messages + chunk)[-_STDERR_KEEP:]
            elif chunk:
                out.write(decoder.decode(chunk))
            if not chunk:
                del streams[fd]
    try:
        child.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return None
    return messages


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the command that started it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(EXIT_REFUSED)


def _cap_memory(limit: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (min(soft, 2**62), hard))


def _watchdog(deadline: float) -> None:
    """Stop this process a little after the command's deadline, whatever it is doing."""
    time.sleep(max(deadline + _CHILD_GRACE_S - time.monotonic(), 0.0))
    os._exit(EXIT_REFUSED)


def _child_main() -> int:
    # Ctrl-C on a terminal reaches the whole process group: the command decides (it kills
    # this process), so that one message is printed, by it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    request = json.loads(sys.stdin.read())
    _die_with_parent(request["parent"])
    limits = Limits(**request["limits"])
    _cap_memory(limits.max_memory)
    # the monotonic clock is the machine's: the command's deadline holds here as it is
    deadline = request["deadline"]
    threading.Thread(target=_watchdog, args=(deadline,), daemon=True).start()
    try:
        result = run_query(Path(request["path"]), request["sql"], limits,
                           deadline - _CHILD_MARGIN_S)
        try:
            write_result(result, request["format"], sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped reading (`| head`): it took what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush at exit
            return 0
        notice = result.notice(limits)
        if notice:
            print(notice, file=sys.stderr)
        return 0
    except MemoryError as exc:
        print(f"error: {limits.memory_error(exc)}", file=sys.stderr)
        return EXIT_REFUSED
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except LockHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except Exception as exc:  # a crash: exit 3 with its traceback, as every command's
        traceback.print_exc()
        print(f"error: semisynth query crashed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(_child_main())
