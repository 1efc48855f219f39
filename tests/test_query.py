"""`semisynth query`'s sandbox on a real DuckDB warehouse: the statements a careless or
hostile user tries are refused, the warehouse is unchanged, a long query is stopped."""

import time

import pytest
from terminal import default_sigint

from semisynth.errors import QueryError, QueryTimeout
from semisynth.warehouse import db
from semisynth.warehouse.query import Limits, run_query


@pytest.fixture
def wh(tmp_path):
    path = db.init(tmp_path / "warehouse.duckdb")
    db.insert(path, "runs", [{"run_id": "r1", "status": "COMPLETED"}])
    return path


def test_a_select_returns_its_rows(wh):
    frame = run_query(wh, "SELECT run_id, status FROM runs").frame
    assert frame.to_dict("records") == [{"run_id": "r1", "status": "COMPLETED"}]


@pytest.mark.parametrize("sql", [
    "DELETE FROM runs",
    "CREATE TABLE x (a INT)",
    "ATTACH '{tmp}/other.duckdb' AS s (READ_WRITE)",
    "ATTACH '{wh}' AS again (READ_WRITE)",
    "COPY (SELECT * FROM runs) TO '{tmp}/out.csv'",
    "EXPORT DATABASE '{tmp}/export'",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/root/*')",
    "SELECT * FROM read_parquet('{tmp}/*.parquet')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "PRAGMA threads = 1",
    "SET enable_external_access = true",
    "SELECT 1; DELETE FROM runs",
])
def test_writes_files_settings_and_extensions_are_refused(wh, tmp_path, sql):
    with pytest.raises(QueryError):
        run_query(wh, sql.format(tmp=tmp_path, wh=wh))
    assert db.query(wh, "SELECT count(*) AS n FROM runs").n[0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warehouse.duckdb"]


def test_a_long_query_is_stopped_at_its_time_limit(wh):
    started = time.perf_counter()
    with pytest.raises(QueryTimeout, match="time limit of 0.5 s"):
        run_query(wh, "SELECT count(*) FROM range(100000000000) a, range(10) b",
                  Limits(timeout=0.5))
    assert time.perf_counter() - started < 10


def test_no_warehouse_is_a_clear_error(tmp_path):
    with pytest.raises(QueryError, match="no warehouse"):
        run_query(tmp_path / "none.duckdb", "SELECT 1")


def test_ctrl_c_stops_a_long_query_of_the_command(wh):
    """SIGINT (Ctrl-C) reaches a running `semisynth query`: it stops with exit 130 at once."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "semisynth.cli", "--data-root", str(wh.parent), "query",
         "SELECT count(*) FROM range(100000000000) a, range(10) b", "--timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint)
    time.sleep(8)  # imports done and the statement running, even on a loaded machine
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "stopped (Ctrl-C)" in err, (out, err)


def test_the_command_says_why_a_statement_is_refused(wh, capsys):
    from semisynth.cli import main as cli

    assert cli(["--data-root", str(wh.parent), "query", "DELETE FROM runs"]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli(["--data-root", str(wh.parent), "query", "SELECT 1; SELECT 2"]) == 2
    assert "one SQL statement at a time" in capsys.readouterr().err

