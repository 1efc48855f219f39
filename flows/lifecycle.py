"""The Prefect side of a run's life: the server it talks to ends with its process, and the
flow runs of runs that were killed are marked Crashed.

Without ``PREFECT_API_URL`` Prefect starts a temporary server (a ``uvicorn`` subprocess,
about 225 MB) in whichever process first needs one: the CLI, and again each Dask worker
process, whose tasks carry no API URL to use. A CLI killed with SIGKILL leaves them all
running. ``temporary_server`` starts one server itself instead
(``PrefectServer``, which gets SIGTERM from the kernel when the thread that
started it dies: PR_SET_PDEATHSIG) and points this process and its subprocesses at it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from semisynth.warehouse.lock import data_root_lock

API_URL_ENV = "PREFECT_API_URL"


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the server's process (Linux): get SIGTERM when `semisynth serve` dies, even by
    SIGKILL, so that no orphaned server keeps the port."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the finally clause of serve() still stops it
        pass


def _prefect_command() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


class PrefectServer:
    """``prefect server start --host 127.0.0.1 --port PORT`` as a subprocess."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.ui_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        if not _port_free(self.port):
            raise ValueError(f"port {self.port} on 127.0.0.1 is in use: pass --port, or set "
                             "PREFECT_API_URL to use a running Prefect server")
        env = dict(os.environ)
        env.pop("PREFECT_API_URL", None)
        env.update({
            "PREFECT_UI_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
        })
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes it while it runs
        try:
            # its own session: a Ctrl-C in the terminal reaches only `semisynth serve`,
            # which stops the runner first and the server after it
            self.process = subprocess.Popen(
                [*_prefect_command(), "server", "start", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with code {self.process.returncode}"
                                   f" while starting:\n{self.log_tail()}")
            if healthy(self.api_url):
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Prefect server did not answer {self.api_url}/health within "
                           f"{timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temporary_server(log_dir: Path) -> Iterator[str | None]:
    """A Prefect server for the block, owned by this process: stopped when the block
    ends and gone within seconds of this process's death, however it dies. Yields its API
    URL; with a Prefect API already configured, starts nothing and yields None.

    Start it from the thread that lives as long as the process (the main thread): the
    kernel stops the server when the thread that started it ends."""
    # lazy: prefect, loaded only when this runs
    from prefect.logging import get_logger
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    server = PrefectServer(_free_port(), Path(log_dir) / "prefect-server-run.log")
    get_logger("semisynth").info("Starting a temporary Prefect server on %s for this run "
                                 "(log: %s); it stops with the run", server.ui_url,
                                 server.log_path)
    server.start()
    previous = os.environ.get(API_URL_ENV)
    os.environ[API_URL_ENV] = server.api_url  # the Dask workers inherit it
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if previous is None:
            os.environ.pop(API_URL_ENV, None)
        else:
            os.environ[API_URL_ENV] = previous
        # Prefect ships run logs from a background worker; logs still queued when the
        # server stops would be sent at exit, to nothing ("Error logging to API")
        APILogWorker.drain_all(timeout=10)
        server.stop()


def run_owned(flow, root: Path, lock_wait_s: float, holder: str, *args) -> dict:
    """Call ``flow(*args)`` holding the data root's lock (the flow re-enters it) and, without
    PREFECT_API_URL, a Prefect server that ends with this process; returns the flow's result
    dict with its final ``state`` and ``flow_run_id``. A crash of the flow is raised, not
    returned."""
    with data_root_lock(root, lock_wait_s, holder), temporary_server(Path(root) / "logs"):
        state = flow(*args, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):  # a crash, not a verdict
        raise result
    result["state"] = state.type.value
    result["flow_run_id"] = str(state.state_details.flow_run_id)
    return result


REFUSED_STATE = "Refused"


def refused(exc: BaseException):
    """The final state of a flow run that stopped on its input (``errors.REFUSALS``): Failed,
    named Refused (Prefect's UI and API show the name), the error as its data, which
    ``run_owned`` raises to the command (exit 2). Logged as one line: the error is the
    user's to read, not a traceback."""
    # lazy: prefect, loaded only when this runs
    from prefect import get_run_logger
    from prefect.states import Failed

    get_run_logger().error("input refused: %s", exc)
    return Failed(name=REFUSED_STATE, message=f"input refused: {exc}", data=exc)


def mark_crashed(flow_run_ids: Iterable[str | None], message: str) -> list[str]:
    """Set the Prefect flow runs of runs found dead (``records.close_dead_runs``) to
    Crashed with ``message``, where this API knows them and they are not final yet.
    Returns the ids marked."""
    # lazy: prefect, loaded only when this runs
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    marked = []
    with get_client(sync_client=True) as client:
        for flow_run_id in filter(None, flow_run_ids):
            try:
                flow_run = client.read_flow_run(uuid.UUID(flow_run_id))
            except (ValueError, ObjectNotFound):  # not a flow run id, or another server's
                continue
            if flow_run.state is not None and flow_run.state.is_final():
                continue
            client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)
            marked.append(flow_run_id)
    return marked
