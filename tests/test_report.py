"""The run's pictures and `semisynth report`, on a tiny nightly_refresh run: the real prior,
a real Prefect server, DuckDB, Great Expectations and a local Dask cluster."""

import asyncio
import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from semisynth.cli import main as cli
from semisynth.warehouse import db

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ["ngram-rank-frequency.png", "ppl-brown.png"]


@pytest.fixture(scope="module")
def tiny_run(prefect_server, tmp_path_factory, prior_folder, brown_shards):
    """24 Brown documents (first 48 tokens) as the reference; their ToEdit copy (flatter
    redraws, beta 8, so that 1152 tokens see some edits) passes the gate and is released; a
    collapsed corpus (one sentence repeated) fails it and is blocked."""
    home = tmp_path_factory.mktemp("report")
    collapsed = home / "collapsed.jsonl"
    collapsed.write_text("".join(json.dumps({"id": f"c{i}", "text": "The cat sat on the mat. " * 12})
                                 + "\n" for i in range(12)) + "{not json\n")
    config = {
        "name": "tiny", "data_root": str(home), "seed": 5, "shard_docs": 12,
        "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": 48},
        "edit": {"beta": 8.0},
        "corpora": {
            "brown": {"role": "reference", "paths": [str(brown_shards[0])], "limit_docs": 24},
            "brown_toedit": {"edited_from": "brown", "reference": "brown", "release": True},
            "collapsed": {"paths": [str(collapsed)], "reference": "brown", "release": True},
        },
        "metrics": {"bootstrap": 20},
    }
    path = home / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    from semisynth.flows.nightly import run

    result = run(str(path))
    assert result["state"] == "FAILED", result.get("summary")
    assert result["gates"] == {"brown_toedit": True, "collapsed": False}, result["failures"]
    return home, path, result


def test_flow_writes_the_plots_in_the_run_folder(tiny_run):
    home, _, result = tiny_run
    folder = home / "runs" / result["run_id"]
    assert sorted(p.name for p in folder.glob("*.png")) == PLOTS
    for name in PLOTS:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_flow_run_has_the_plots_as_artifacts(tiny_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    _, _, result = tiny_run

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[result["flow_run_id"]])))

    by_key = {a.key: a for a in asyncio.run(artifacts())}
    for key in ("semisynth-ppl-brown", "semisynth-ngram-rank-frequency"):
        assert by_key[key].type == "markdown"
        uri = re.search(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", by_key[key].data)
        assert base64.b64decode(uri.group(1)).startswith(PNG_MAGIC)
    assert "semisynth-summary" in by_key


def test_report_renders_tables_plots_verdicts_and_links(tiny_run, capsys):
    home, _, result = tiny_run
    run_id = result["run_id"]
    assert cli(["--data-root", str(home), "report", run_id]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == home / "runs" / run_id / "report.html"
    page = out.read_text()
    # the plots, inlined: the report is one self-contained file
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(alt for alt, _ in images) == [p[:-4] for p in PLOTS]
    for alt, data in images:
        assert base64.b64decode(data) == (out.parent / f"{alt}.png").read_bytes()
    # the gate verdicts, with every expectation's observed value and threshold
    assert re.search(r"<code>brown_toedit</code>: suite <code>coverage</code> "
                     r'<span class="pass">PASSED</span>', page)
    assert re.search(r'<code>collapsed</code>: suite <code>coverage</code> '
                     r'<span class="fail">FAILED</span> — failing: [^<]*ppl_low_frac', page)
    wh = db.warehouse_path(home)
    validations = db.query(wh, "SELECT * FROM validations WHERE run_id = ?", [run_id])
    for v in validations.itertuples():
        row = re.escape(f"<td class=\"l\">{v.metric}</td><td class=\"\">{v.observed:.4g}</td>"
                        f"<td class=\"\">{v.threshold.replace('<', '&lt;').replace('>', '&gt;')}</td>")
        assert re.search(row, page), v.expectation
    # the metric tables: each candidate next to the reference's yardstick, with the budget
    budget = db.query(wh, "SELECT DISTINCT budget FROM metrics WHERE run_id = ? AND metric "
                          "<> 'edit_rate'", [run_id]).budget
    assert f"Equal token budget per side: {int(budget[0])} tokens" in page
    assert "<th>brown split-half (yardstick)</th><th>brown_toedit</th><th>collapsed</th>" \
        in page.replace(' class=""', "").replace(' class="l"', "")
    for metric in ("ppl_q50", "ppl_low_frac", "distinct_3", "ref_coverage_2", "js_1", "edit_rate"):
        assert f'<td class="l">{metric}</td>' in page
    # the release, the quarantined row and the Data Docs, linked
    assert result["releases"]["brown_toedit"] in page
    assert "Blocked by the gate, not released: collapsed" in page
    assert "invalid json" in page
    links = re.findall(r'<a href="(file://[^"]+)"', page)
    assert any(link.endswith("/index.html") for link in links)
    assert any(run_id in link and "collapsed" in link for link in links)
    for link in links:
        assert Path(link[len("file://"):]).exists()


def test_report_out_option_and_unknown_run(tiny_run, tmp_path, capsys):
    home, _, result = tiny_run
    target = tmp_path / "elsewhere" / "r.html"
    assert cli(["--data-root", str(home), "report", result["run_id"], "--out", str(target)]) == 0
    assert target.read_text().startswith("<!DOCTYPE html>")
    capsys.readouterr()
    assert cli(["--data-root", str(home), "report", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown run id 'no-such-run'" in err and result["run_id"] in err


def test_metrics_command_on_the_flows_corpora_reuses_its_scores(tiny_run, capsys):
    """A derived corpus (edited_from) by name: the shards of the run that made it, their
    cached scores, and its edit rate; then the report of that command's run."""
    home, path, result = tiny_run
    wh = db.warehouse_path(home)
    budget = db.query(wh, "SELECT max(budget) AS b FROM metrics WHERE run_id = ? AND metric "
                          "<> 'edit_rate'", [result["run_id"]]).b[0]
    args = ["--data-root", str(home), "metrics", "brown_toedit", "--reference", "brown",
            "--config", str(path), "--budget", str(int(budget))]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "model work: 0 tokens" in out
    run_id = re.search(r"run (metrics-[0-9T-]+)", out).group(1)
    mine = db.query(wh, "SELECT metric, value FROM metrics WHERE run_id = ? AND corpus = "
                        "'brown_toedit' ORDER BY metric", [run_id])
    flows = db.query(wh, "SELECT metric, value FROM metrics WHERE run_id = ? AND corpus = "
                         "'brown_toedit' ORDER BY metric", [result["run_id"]])
    # the same score files, budget and seed as the flow: the same numbers
    assert mine.metric.tolist() == flows.metric.tolist() and "edit_rate" in set(mine.metric)
    assert mine.value.tolist() == pytest.approx(flows.value.tolist(), nan_ok=True)
    assert cli(["--data-root", str(home), "report", run_id]) == 0
    page = (home / "runs" / run_id / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "No gate validation" in page


def test_report_writes_the_warehouse_values_as_text(tmp_path):
    """The page is an autoescaped template: a run's message with markup in it is shown, not
    interpreted."""
    from semisynth.quality.report import build_report
    from semisynth.warehouse import records

    wh = db.init(db.warehouse_path(tmp_path))
    with records.tracked_run(wh, "r1", config_name="<i>cfg</i>", config_json="{}", model="m"):
        pass
    db.execute(wh, "UPDATE runs SET message = ? WHERE run_id = 'r1'", ['<script>x("&")</script>'])
    page = build_report(tmp_path, "r1", tmp_path / "r.html").read_text()
    assert "<script>" not in page and "<i>cfg" not in page
    assert "&lt;script&gt;x(&#34;&amp;&#34;)&lt;/script&gt;" in page
    assert '<td class="l">&lt;i&gt;cfg&lt;/i&gt;</td>' in page
