"""`semisynth query`'s limits hold (issue 19): memory, rows and bytes, time, spill, and a
writer holding the warehouse. The real command in a process of its own, on a real DuckDB
warehouse; memory as the kernel measured it (the largest resident set of the command and of
the query process it starts)."""

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import psutil
import pytest
from terminal import default_sigint

from semisynth.warehouse import db


@pytest.fixture
def wh(tmp_path):
    path = db.init(tmp_path / "warehouse.duckdb")
    db.insert(path, "runs", [{"run_id": "r1", "status": "COMPLETED"}])
    return path


# A wrapper process that runs the command and prints, last on stderr, the largest resident
# set among the processes it waited for, its grandchildren included (the query process)
MEASURED = """
import resource, subprocess, sys
guard = int(sys.argv[1])
if guard:  # the test machine's own guard, far above the limit under test
    resource.setrlimit(resource.RLIMIT_DATA, (guard, resource.getrlimit(resource.RLIMIT_DATA)[1]))
done = subprocess.run(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6  # KiB -> MB
print(f"peak_rss_mb={peak:.0f}", file=sys.stderr)
sys.exit(done.returncode)
"""


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float
    seconds: float


def _query(root, *args, guard=0, env=None, stdout=subprocess.PIPE, timeout=120) -> Done:
    """`semisynth --data-root ROOT query ARGS` run to its end; ``guard``: a cap on the data
    segment (bytes) of the whole process tree, so that a limit that does not hold fails the
    test instead of taking the machine's memory."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", MEASURED, str(guard), sys.executable, "-m", "semisynth.cli",
         "--data-root", str(root), "query", *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout,
        env=env, preexec_fn=default_sigint)
    seconds = time.monotonic() - started
    err, _, peak = done.stderr.rstrip("\n").rpartition("\n")
    if not peak.startswith("peak_rss_mb="):  # the whole stderr was the peak line
        err, peak = "", done.stderr.strip()
    return Done(done.returncode, done.stdout or "", err, float(peak.split("=")[1]), seconds)


def _in_process(wh, capsys, *args) -> tuple[int, str, str]:
    """The command in this process (the query process is still a process of its own):
    exit code, stdout, stderr."""
    from semisynth.cli import main as cli

    code = cli(["--data-root", str(wh.parent), "query", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_memory_limit_holds_and_what_passes_it_is_refused(wh, capsys):
    # DuckDB's memory_limit does not count this string: it took 9.9 GB against a 2 GB limit
    done = _query(wh.parent, "SELECT repeat('x', 2000000000)", guard=4 * 2**30)
    assert done.returncode == 2, done
    assert "needs more memory than its limit of 2 GB (--max-memory" in done.stderr, done
    assert "Traceback" not in done.stderr
    assert done.peak_mb < 2000, done
    # what DuckDB's memory_limit does not count (its result as Arrow buffers, 400 MB here)
    # meets the process's cap
    done = _query(wh.parent, "SELECT repeat('x', 200000) AS s FROM range(2000)",
                  "--max-memory", "512MB", "--max-bytes", "1GB", guard=4 * 2**30)
    assert done.returncode == 2 and "more memory than its limit of 512 MB" in done.stderr, done
    assert done.peak_mb < 512, done
    # and what fits is printed
    code, out, err = _in_process(wh, capsys, "SELECT length(repeat('x', 100000000)) AS n",
                                 "--format", "csv", "--max-memory", "512MB")
    assert (code, out) == (0, "n\n100000000\n"), err


def test_rows_and_bytes_are_capped_and_the_cut_is_said(wh, capsys):
    code, out, err = _in_process(wh, capsys, "SELECT range AS n FROM range(25000)", "--format", "csv")
    assert code == 0 and out.splitlines() == ["n", *map(str, range(10_000))], err
    assert "first 10,000 rows of" in err and "--max-rows N to change" in err
    code, out, err = _in_process(wh, capsys, "SELECT range AS n FROM range(25000)", "--format",
                                 "json", "--max-rows", "3")
    assert (code, out) == (0, '[{"n":0},{"n":1},{"n":2}]\n') and "first 3 rows of" in err
    # no more rows than the limit: nothing was cut, nothing said
    code, out, err = _in_process(wh, capsys, "SELECT range AS n FROM range(3)", "--max-rows", "3")
    assert (code, out.split(), err) == (0, ["n", "0", "1", "2"], "")
    code, out, err = _in_process(wh, capsys, "SELECT repeat('x', 1000) AS s FROM range(100)",
                                 "--format", "csv", "--max-bytes", "10KB")
    rows = out.splitlines()[1:]
    assert code == 0 and 1 <= len(rows) < 10 and set(rows) == {"x" * 1000}, err
    assert f"first {len(rows)} rows of" in err and "--max-bytes 10 KB" in err
    # a table pads each column to its widest value in every row: a long value is cut there
    code, out, err = _in_process(wh, capsys, "SELECT repeat('y', 5000) AS s FROM range(3)")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and max(map(len, lines)) <= 1000, err
    assert lines[1].strip().endswith("y...")


def test_the_timeout_covers_fetching_and_printing(wh):
    # 20M rows with --timeout 5 ran for 18.5 s: printing was outside the limit, and nothing
    # bounded the rows (the limit is generous here: other work may share the machine)
    done = _query(wh.parent, "SELECT * FROM range(20000000)", "--timeout", "15",
                  stdout=subprocess.DEVNULL, guard=4 * 2**30)
    assert done.returncode == 0 and done.seconds < 15, done
    assert "first 10,000 rows of" in done.stderr
    # a reader of the output that never reads: the command still ends at its time limit
    proc = subprocess.Popen(
        [sys.executable, "-m", "semisynth.cli", "--data-root", str(wh.parent), "query",
         "SELECT range, repeat('x', 100) FROM range(100000)", "--timeout", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    started = time.monotonic()
    try:
        code = proc.wait(timeout=30)
        seconds = time.monotonic() - started
        err = proc.stderr.read()
        assert code == 2 and "ran past its time limit of 4 s" in err, err
        assert seconds < 4 + 6, seconds  # the time limit counts from the command's start
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize(("args", "message"), [
    (["--timeout", "nan"], "--timeout must be a finite number of seconds above 0, got nan"),
    (["--timeout", "inf"], "--timeout must be a finite number of seconds above 0, got inf"),
    (["--timeout", "0"], "--timeout must be a finite number of seconds above 0, got 0"),
    (["--timeout", "-1"], "--timeout must be a finite number of seconds above 0, got -1"),
    (["--max-rows", "0"], "--max-rows must be at least 1"),
    (["--max-bytes", "lots"], "--max-bytes must be a size such as 64MB"),
    (["--max-memory", "1MB"], "--max-memory must be at least 512 MB"),
])
def test_limits_out_of_range_are_refused_naming_the_option(wh, capsys, args, message):
    from semisynth.cli import main as cli

    assert cli(["--data-root", str(wh.parent), "query", "SELECT 1", *args]) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err


def test_nothing_spills_to_disk_and_a_killed_query_leaves_nothing(wh, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    # a temporary table larger than the memory given: refused, not written to disk
    done = _query(wh.parent, "CREATE TEMP TABLE t AS SELECT range AS i, repeat('x', 100) || "
                  "range AS s FROM range(5000000)", "--max-memory", "512MB", env=env)
    assert done.returncode == 2 and "more memory than its limit of 512 MB" in done.stderr, done
    assert sorted(p.name for p in wh.parent.iterdir()) == ["tmp", "warehouse.duckdb"]
    assert list(tmp.iterdir()) == []
    # the command killed mid-query: its query process goes with it, and leaves no file
    proc = subprocess.Popen(
        [sys.executable, "-m", "semisynth.cli", "--data-root", str(wh.parent), "query",
         "SELECT count(*) FROM range(100000000000) a, range(10) b", "--timeout", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    command = psutil.Process(proc.pid)
    deadline = time.monotonic() + 30
    while not command.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    children = command.children()
    assert children, "the command started no query process"
    time.sleep(1)  # the statement running
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert sorted(p.name for p in wh.parent.iterdir()) == ["tmp", "warehouse.duckdb"]
    assert list(tmp.iterdir()) == []


HOLD_WRITER = """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])  # as a run that stores its results does
    con.execute("INSERT INTO runs (run_id, status) VALUES (?, 'RUNNING')", [sys.argv[3]])
    print("writing", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _writer(wh, seconds: float, run_id: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_WRITER), str(wh),
                             str(seconds), run_id], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing", f"writer exited with {proc.wait()}"
    return proc


def test_a_query_waits_for_a_writer_then_gives_a_clear_error(wh, capsys):
    writer = _writer(wh, 3, "r2")
    try:
        started = time.monotonic()
        code, out, err = _in_process(wh, capsys, "SELECT count(*) AS n FROM runs", "--format", "csv")
        assert (code, out) == (0, "n\n2\n"), err
        assert time.monotonic() - started > 2.5  # it could open only once the writer closed
    finally:
        writer.kill()
        writer.wait()
    writer = _writer(wh, 60, "r3")
    try:
        started = time.monotonic()
        code, out, err = _in_process(wh, capsys, "SELECT count(*) AS n FROM runs", "--timeout", "8")
        assert code == 3 and "stayed locked by a writer for" in err, err
        assert f"PID {writer.pid}" in err and "Traceback" not in err, err
        assert time.monotonic() - started < 8 + 1
    finally:
        writer.kill()
        writer.wait()
