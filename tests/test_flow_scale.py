"""benchmarks/flow_scale.py --dry-run: the nightly flow at one tiny size, on a real Prefect
server and a real Dask LocalCluster the script starts, with a tiny prior it builds. Checks
the shape of its JSON line, not its figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_dry_run_reports_every_figure(assets_root, brown_shards, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "flow_scale.py"), "--dry-run",
         "--assets", str(assets_root), "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    (size,) = report["sizes"]
    assert size["status"] == "finished", size
    assert size["flow_state"] in {"COMPLETED", "FAILED"}  # FAILED: a release the gate blocked
    for key in ("tokens", "flow_peak_rss_mb", "worker_peak_rss_mb", "wall_seconds"):
        assert size[key] > 0, key
    assert len(size["worker_peaks_rss_mb"]) == 2
    assert all(peak > 0 for peak in size["worker_peaks_rss_mb"].values())
    stages = size["stage_seconds"]
    for stage in ("ingest", "score", "derive", "record", "metrics", "gate", "release"):
        assert stage in stages and stages[stage] >= 0, stage
    # every stage of the config ran: the edited corpus passes the opened-up gate and is
    # released; the scoring, metrics and gate stages take measurable time
    assert all(stages[s] > 0 for s in ("ingest", "score", "derive", "metrics", "gate", "release"))
    assert set(size["corpora"]) == {"human", "fresh", "human_toedit", "mixed"}
    assert "human_toedit" in size["released"]
    assert set(size["synthetic_share"]) == {"fresh"}  # the share estimate ran
    assert size["worker_torch_threads"] == [1]
    assert report["prior"]["scoring"]["tokens_per_s"] > 0
