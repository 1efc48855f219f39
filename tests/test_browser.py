"""The Prefect UI, end to end: `semisynth serve` (its own Prefect server, its own data
root and PREFECT_HOME), a run of `nightly-refresh` triggered through the API on a small
config whose only release candidate passes the gate, and the flow run's page rendered by
headless Chromium (Debian's `chromium`, installed by `make test`): the run's name, its
Completed state and the summary artifact are on the page. The screenshot is kept under
$SEMISYNTH_TEST_ARTIFACTS (default var/test-artifacts/)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prefect_helpers import free_port, prefect_client
from terminal import default_sigint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SEMISYNTH_TEST_ARTIFACTS", REPO / "var" / "test-artifacts"))
SEMISYNTH = Path(sys.executable).with_name("semisynth")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")



class Chromium:
    """Headless Chromium driven over the DevTools protocol (a websocket; the `websockets`
    package comes with Prefect). `--dump-dom` alone is not enough here: the flow run page
    opens on its Logs tab (it resets ?tab=Artifacts while the run loads), so the test
    clicks the Artifacts tab the way a user does."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(profile.parent / "chromium.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        active = profile / "DevToolsActivePort"  # Chromium writes its port there
        port = _wait_for(lambda: active.exists() and active.read_text().split("\n")[0].strip(),
                         60, "Chromium's DevTools port")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, prior_folder, brown_shards):
    """`semisynth serve` on its own port, data root and PREFECT_HOME."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium "
                    "(or: apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("serve")
    home = tmp / "data"
    config = {
        "name": "browser",
        "data_root": str(home),
        "seed": 5,
        "shard_docs": 24,
        # tens of seconds of model work: 48 documents, their first 64 tokens, scored twice
        # (the reference and its edited copy)
        "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": 64},
        "edit": {"threshold": 0.9},
        "corpora": {
            "brown": {"role": "reference", "paths": [str(p) for p in brown_shards[:2]],
                      "limit_docs": 48},
            "brown_toedit": {"edited_from": "brown", "reference": "brown", "release": True},
        },
        "metrics": {"bootstrap": 50},
    }
    config_path = tmp / "browser.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "SEMISYNTH_NIGHTLY_CRON", "SEMISYNTH_GPU_WORKERS")}
    env.update({"PREFECT_HOME": str(tmp / "prefect-home"), "SEMISYNTH_HOME": str(home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"})
    log_path = tmp / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(SEMISYNTH), "serve", "--config", str(config_path), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp,
        preexec_fn=default_sigint,  # the test stops it with Ctrl-C
    )
    api_url, ui_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, f"semisynth serve exited {proc.returncode}:\n{log_path.read_text()}"
        return "Ctrl-C stops it." in log_path.read_text()

    try:
        _wait_for(ready, 240, "semisynth serve to start")
        yield {"proc": proc, "log": log_path, "api_url": api_url, "ui_url": ui_url,
               "port": port, "config": config_path, "tmp": tmp}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def finished_run(served):
    from prefect.deployments import run_deployment

    with prefect_client(served["api_url"]) as client:
        flow_run = run_deployment("nightly_refresh/nightly-refresh", timeout=0)

        def done():
            fr = client.read_flow_run(flow_run.id)
            return fr if fr.state is not None and fr.state.is_final() else None

        fr = _wait_for(done, 600, f"flow run {flow_run.name} to finish", interval=2)
    return fr


def test_served_deployment_is_scheduled_with_one_run_at_a_time(served):
    with prefect_client(served["api_url"]) as client:
        d = client.read_deployment_by_name("nightly_refresh/nightly-refresh")
        gpu = client.read_concurrency_limit_by_tag("gpu")
    assert [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] == [("0 2 * * *", "UTC")]
    assert d.global_concurrency_limit.limit == 1
    assert d.parameters == {"config_path": str(served["config"]), "overrides": []}
    assert gpu.concurrency_limit == 1  # one Dask worker (dask_workers: 1) runs score+edit
    out = served["log"].read_text()
    assert f"Prefect UI: {served['ui_url']}" in out


def test_triggered_run_completes_with_the_dask_runner(served, finished_run):
    fr = finished_run
    assert fr.state.type.value == "COMPLETED", (fr.state, served["log"].read_text()[-4000:])
    # the served flow is the flow as `semisynth run` runs it: on semisynth's Dask runner
    assert "prefect.task_runner.dask" in served["log"].read_text()
    releases = list((served["tmp"] / "data" / "releases").glob("browser-brown_toedit/v*"))
    assert len(releases) == 1


def test_flow_run_page_shows_name_state_and_summary_artifact(served, finished_run):
    fr = finished_run
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = Chromium(served["tmp"] / "chromium-profile")
    try:
        browser.call("Page.navigate", url=f"{served['ui_url']}/runs/flow-run/{fr.id}")
        _wait_for(lambda: fr.name in browser.text() and "Completed" in browser.text(), 90,
                  "the flow run page to render")
        clicked = browser.js(
            "(() => { const tab = Array.from(document.querySelectorAll('ul[role=tablist] li'))"
            ".find(e => e.textContent.trim() === 'Artifacts'); if (tab) tab.click(); return !!tab; })()")
        assert clicked, browser.text()
        _wait_for(lambda: "semisynth-summary" in browser.text(), 60, "the artifacts tab")
        time.sleep(1)  # let the cards finish painting
        text = browser.text()
        shot = browser.screenshot(ARTIFACTS / "browser-flow-run.png")
        (ARTIFACTS / "browser-flow-run.txt").write_text(text)
        # and the summary itself: its card opens the artifact's rendered markdown
        opened = browser.js(
            "(() => { const card = Array.from(document.querySelectorAll('a'))"
            ".find(a => a.textContent.includes('semisynth-summary')); if (card) card.click();"
            " return !!card; })()")
        assert opened, text
        _wait_for(lambda: "Gate verdicts" in browser.text(), 60, "the summary artifact's page")
        time.sleep(1)
        summary = browser.text()
        summary_shot = browser.screenshot(ARTIFACTS / "browser-summary-artifact.png")
    finally:
        browser.close()
    print(f"\nscreenshots: {shot} (flow run page), {summary_shot} (summary artifact)")
    assert "brown_toedit" in summary and "PASSED" in summary
    assert fr.name in text
    assert "Completed" in text
    assert "semisynth-summary" in text
    assert "nightly_refresh" in text and "nightly-refresh" in text  # flow and deployment
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_stops_serve_and_its_server(served, finished_run):
    proc = served["proc"]
    before = len(served["log"].read_text())
    proc.send_signal(signal.SIGINT)
    exit_code = proc.wait(90)
    after = served["log"].read_text()[before:]
    # The log is the only witness of why serve exited badly; show it.
    assert exit_code == 0, after
    assert "semisynth serve stopped" in after
    assert "Traceback" not in after, after
    with pytest.raises(OSError):
        urllib.request.urlopen(served["api_url"] + "/health", timeout=5)
