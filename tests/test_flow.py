"""The nightly_refresh flow end to end on a small slice: real prior, real Prefect server,
real DuckDB, real Great Expectations, a real (local) Dask cluster."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semisynth.cli import main as cli
from semisynth.tasks import assets
from semisynth.tasks.release import verify_release
from semisynth.warehouse import db

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def synthetic_slice(assets_root, brown_shards, prior_f32) -> Path:
    out = assets_root / "synthetic" / "slice-24x128.jsonl.gz"
    return assets.synthesize(prior_f32, brown_shards, out, documents=24, max_new_tokens=128, seed=7)


@pytest.fixture(scope="session")
def flow_run(prefect_server, tmp_path_factory, prior_folder, brown_shards, synthetic_slice):
    home = tmp_path_factory.mktemp("home")
    damaged = home / "damaged.jsonl"  # two rows the ingest must quarantine, not lose
    damaged.write_text('{"id": "d1", "text": "cut off\n["not", "an", "object"]\n')
    config = {
        "name": "slice",
        "data_root": str(home),
        "seed": 11,
        "shard_docs": 16,
        "prior": {"model": str(prior_folder), "precision": "float32",
                  "max_tokens": 128},
        "corpora": {
            "brown": {"role": "reference", "paths": [str(p) for p in brown_shards[:2]],
                      "limit_docs": 48},
            "brown_toedit": {"edited_from": "brown", "reference": "brown", "release": True,
                             "synthetic_reference": "synthetic"},
            "synthetic": {"role": "monitored", "paths": [str(synthetic_slice), str(damaged)],
                          "reference": "brown"},
            "mix50": {"mix": {"brown": 0.5, "synthetic": 0.5}, "reference": "brown", "release": True},
        },
        "metrics": {"bootstrap": 50},
    }
    path = home / "slice.yaml"
    path.write_text(yaml.safe_dump(config))
    from semisynth.flows.nightly import run

    return home, path, run(str(path))


def test_flow_ends_failed_because_the_mixture_is_blocked(flow_run):
    _, _, result = flow_run
    assert result["state"] == "FAILED"
    assert result["gates"]["brown_toedit"] is True
    assert result["gates"]["mix50"] is False
    assert set(result["releases"]) == {"brown_toedit"}
    assert result["blocked"] == ["mix50"]
    failing = {f["metric"] for f in result["failures"]["mix50"]}
    # the mixture's perplexity distribution is pulled to the low end, as the paper finds
    assert failing & {"ppl_low_frac", "ppl_ks", "ppl_w1"}, failing


def test_warehouse_tables_are_filled(flow_run):
    home, _, result = flow_run
    wh = db.warehouse_path(home)
    for table in ("runs", "corpora", "shards", "doc_scores", "edits", "metrics",
                  "ppl_histograms", "ngram_top", "validations", "releases"):
        count = db.query(wh, f"SELECT count(*) FROM {table}").iloc[0, 0]
        assert count > 0, table
    metrics = db.query(wh, "SELECT DISTINCT corpus, comparison, metric FROM metrics")
    expected = {"ppl_q01", "ppl_q50", "ppl_q99", "ppl_low_frac", "ppl_tail_frac", "ppl_ks",
                "ppl_w1", "distinct_1", "distinct_3", "top1pct_mass_2", "ref_coverage_2", "js_3"}
    for corpus in ("brown_toedit", "synthetic", "mix50"):
        have = set(metrics[metrics.corpus == corpus].metric)
        assert expected <= have, (corpus, expected - have)
    assert "edit_rate" in set(metrics[metrics.corpus == "brown_toedit"].metric)
    split = metrics[(metrics.corpus == "brown") & (metrics.comparison == "split_half")]
    assert expected <= set(split.metric)
    budgets = db.query(wh, "SELECT DISTINCT budget FROM metrics WHERE metric NOT IN "
                           "('edit_rate', 'synthetic_share')")  # these two: over every document
    assert len(budgets) == 1  # every comparison on the same token budget
    failed = db.query(wh, "SELECT corpus, metric, observed FROM validations WHERE NOT success")
    assert set(failed.corpus) >= {"mix50"}
    assert "brown_toedit" not in set(failed.corpus)
    counts = db.query(wh, "SELECT corpus, rows_in, rows_ok, rows_quarantined, documents "
                          "FROM corpora WHERE rows_in IS NOT NULL")
    assert set(counts.corpus) == {"brown", "synthetic"}
    assert (counts.rows_in == counts.rows_ok + counts.rows_quarantined).all()
    assert (counts.rows_ok == counts.documents).all()
    shard_corpora = set(db.query(wh, "SELECT DISTINCT corpus FROM shards").corpus)
    assert shard_corpora == {"brown", "brown_toedit", "synthetic", "mix50"}
    run = db.query(wh, "SELECT status, flow_run_id FROM runs").iloc[0]
    assert run.status == "FAILED" and run.flow_run_id == result["flow_run_id"]


def test_the_runs_result_names_its_quarantined_rows(flow_run):
    home, _, result = flow_run
    assert result["quarantined_rows"] == 2
    assert [(r["corpus"], Path(r["file"]).name, r["line"]) for r in result["quarantined"]] == [
        ("synthetic", "damaged.jsonl", 1), ("synthetic", "damaged.jsonl", 2)]
    assert all(r["reason"] for r in result["quarantined"])


def test_release_is_verified_and_recorded(flow_run, capsys):
    home, _, result = flow_run
    path = Path(result["releases"]["brown_toedit"])
    assert verify_release(path) == []
    assert (path / "manifest.json").exists()
    rel = db.query(db.warehouse_path(home), "SELECT name, path FROM releases")
    assert list(rel.path) == [str(path)]
    assert cli(["--data-root", str(home), "release", "verify", rel.name[0]]) == 0
    assert not list((home / "releases").glob("*mix50*"))


def test_second_run_reuses_cached_scores(flow_run):
    home, path, first = flow_run
    from semisynth.flows.nightly import run

    again = run(str(path))
    assert again["state"] == "FAILED"
    assert again["model_work_tokens"] == 0
    assert first["model_work_tokens"] > 0
    # unchanged inputs, prior and parameters: the same release, not a new version
    assert again["releases"] == first["releases"]
    assert len(list((home / "releases").glob("*/v*"))) == 1


def test_query_command_is_read_only(flow_run, capsys):
    home, _, _ = flow_run
    assert cli(["--data-root", str(home), "query", "SELECT count(*) AS n FROM runs", "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[0] == "n"
    assert cli(["--data-root", str(home), "query", "DELETE FROM runs"]) == 2


def test_flow_run_and_artifact_are_visible_in_prefect(flow_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    _, _, result = flow_run

    async def look():
        async with get_client() as client:
            fr = await client.read_flow_run(result["flow_run_id"])
            tasks = await client.read_task_runs()
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id]))
            )
            return fr, tasks, arts

    fr, tasks, arts = asyncio.run(look())
    assert fr.state.type.value == "FAILED"
    names = {t.name.split("-")[0] for t in tasks if t.flow_run_id == fr.id}
    assert {"ingest", "score", "metrics", "gate", "release"} <= names
    summary = [a for a in arts if a.key == "semisynth-summary"]
    assert summary and "Gate verdicts" in summary[0].data


def test_metrics_command_gives_the_flows_metric_rows(flow_run, capsys):
    """One pipeline: `semisynth metrics` on corpora of the flow's config runs the same stage
    functions, so on the flow's budget it stores the flow's rows, value for value, and
    makes the edited corpus again from cached scores (no model work)."""
    home, path, result = flow_run
    wh = db.warehouse_path(home)
    columns = "corpus, reference, comparison, metric, n, budget, value, ci_low, ci_high"
    flow_rows = db.query(wh, f"SELECT {columns} FROM metrics WHERE run_id = ? AND "
                             "(corpus = 'brown_toedit' OR comparison = 'split_half') "
                             "ORDER BY ALL", [result["run_id"]])
    budget = int(flow_rows[flow_rows.metric == "ppl_ks"].budget.iloc[0])
    # exit 4: the synthetic reference it estimates its share against lost two damaged rows
    assert cli(["--data-root", str(home), "metrics", "brown_toedit", "--reference", "brown",
                "--config", str(path), "--budget", str(budget)]) == 4
    out = capsys.readouterr().out
    assert "model work: 0 tokens" in out
    run_id = re.search(r"run (metrics-[0-9T-]+)", out).group(1)
    command_rows = db.query(wh, f"SELECT {columns} FROM metrics WHERE run_id = ? ORDER BY ALL",
                            [run_id])
    assert len(flow_rows) > 40
    assert command_rows.equals(flow_rows)


def test_a_candidate_with_a_synthetic_reference_gets_its_share_gated(flow_run):
    home, _, result = flow_run
    wh = db.warehouse_path(home)
    rows = db.query(wh, "SELECT corpus, value, ci_low, ci_high FROM metrics WHERE run_id = ? "
                        "AND metric = 'synthetic_share'", [result["run_id"]])
    assert rows.corpus.tolist() == ["brown_toedit"]  # the one corpus naming a synthetic reference
    share = rows.iloc[0]
    assert 0 <= share.ci_low <= share.value <= share.ci_high <= 1
    assert share.value < 0.25  # edited human text is not the prior's text
    gated = db.query(wh, "SELECT corpus, success FROM validations WHERE run_id = ? AND "
                         "metric = 'synthetic_share'", [result["run_id"]])
    assert gated.values.tolist() == [["brown_toedit", True]]


def test_release_attributes_equal_the_runs_warehouse_rows(flow_run):
    """Every attribute of the released edited corpus is the run's row of that document:
    perplexity and scored tokens its `doc_scores` row (the edited text, scored again), the
    edit counts its `edits` row (from the source's scores); one line per document."""
    import gzip
    import json
    import math

    home, _, result = flow_run
    path = Path(result["releases"]["brown_toedit"])
    manifest = json.loads((path / "manifest.json").read_text())
    wh = db.warehouse_path(home)
    run = [result["run_id"]]
    doc_scores = db.query(wh, "SELECT shard_hash, doc_id, tokens, ppl FROM doc_scores "
                              "WHERE run_id = ? AND corpus = 'brown_toedit'", run)
    edits = db.query(wh, "SELECT doc_id, revised_tokens, edited_tokens, dropped_tokens "
                         "FROM edits WHERE run_id = ? AND corpus = 'brown_toedit'", run)
    got_scores, got_edits = [], []
    for part, shard in enumerate(manifest["sources"]["shards"]):
        with gzip.open(path / "attributes" / "semisynth" / f"part-{part:05d}.jsonl.gz", "rt") as f:
            rows = [json.loads(line) for line in f]
        with gzip.open(path / "documents" / f"part-{part:05d}.jsonl.gz", "rt") as f:
            assert [json.loads(line)["id"] for line in f] == [r["id"] for r in rows]
        for r in rows:
            a = {k.removeprefix("semisynth__"): v[0][2] for k, v in r["attributes"].items()}
            got_scores.append((shard["shard_hash"], r["id"], a["scored_tokens"], a["ppl"]))
            got_edits.append((r["id"], a["revised_tokens"], a["edited_tokens"],
                              a["dropped_tokens"]))
    assert len(got_scores) == manifest["documents"] == len(doc_scores) == len(edits) == 48
    want = [(s, d, t, None if math.isnan(p) else p)
            for s, d, t, p in doc_scores.itertuples(index=False)]
    assert sorted(got_scores) == sorted(want)
    assert sorted(got_edits) == sorted(map(tuple, edits.itertuples(index=False)))
    assert sum(e[2] for e in got_edits) > 0  # the edit changed tokens
    assert manifest["tokens"] == doc_scores.tokens.sum()
    assert (path / "README.md").read_text().startswith("---\n")


def test_a_cli_run_ends_clean(flow_run):
    """`semisynth run` with a Prefect server of its own: the run's logs reach that server
    before it stops, so none is shipped at exit to a server that is gone."""
    home, path, _ = flow_run
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-m", "semisynth.cli", "run", str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # mix50 blocked: the flow run ends Failed
    assert "not released mix50: blocked by the gate" in done.stdout
    assert "Error logging to API" not in done.stdout + done.stderr, done.stderr[-2000:]
