"""`semisynth metrics` and `semisynth validate` on a few short Brown documents: the real
prior, DuckDB and Great Expectations (the tests share one data root, so the documents are
scored once)."""

import gzip
import json
import re

import numpy as np
import pytest
import yaml

from semisynth.cli import main as cli
from semisynth.config import MetricsConfig
from semisynth.quality import measure
from semisynth.quality.sample import comparison_streams
from semisynth.warehouse import db

pytestmark = pytest.mark.slow

METRICS = ([f"ppl_q{q:02d}" for q in (1, 5, 10, 25, 50, 75, 90, 95, 99)]
           + ["ppl_low_frac", "ppl_tail_frac", "ppl_ks", "ppl_w1"]
           + [f"{m}_{n}" for n in (1, 2, 3) for m in ("distinct", "top1pct_mass", "ref_coverage", "js")])


@pytest.fixture(scope="module")
def home(tmp_path_factory, brown_shards, prior_folder):
    """A data root, a config whose reference `brown` is 24 Brown documents (first 48 tokens
    each), the same documents as a separate file, and a collapsed corpus with a bad row."""
    root = tmp_path_factory.mktemp("commands")
    with gzip.open(brown_shards[0], "rt") as f:
        docs = [json.loads(line) for line in f][:24]
    lines = [json.dumps({"id": d["id"], "text": d["text"]}) for d in docs]
    (root / "brown16.jsonl").write_text("\n".join(lines) + "\n")
    (root / "copy.jsonl").write_text("\n".join(lines) + "\n")
    collapsed = [json.dumps({"id": f"c{i}", "text": "The cat sat on the mat. " * 12})
                 for i in range(12)]
    (root / "collapsed.jsonl").write_text("\n".join(collapsed + ["{not json"]) + "\n")
    (root / "empty.jsonl").write_text('{"id": "e1", "text": ""}\n')
    config = {
        "name": "commands", "seed": 3,
        "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": 48},
        "corpora": {
            "brown": {"role": "reference", "paths": [str(root / "brown16.jsonl")]},
            "brown_toedit": {"edited_from": "brown", "reference": "brown"},
        },
        "metrics": {"bootstrap": 20},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _args(home, command, candidate, *extra):
    return ["--data-root", str(home), command, str(candidate), "--reference", "brown",
            "--config", str(home / "config.yaml"), *extra]


def _run_id(out: str, kind: str) -> str:
    return re.search(rf"run ({kind}-[0-9T-]+)", out).group(1)


def _brown_scores(home):
    """The score files of the reference's shards (the copy has the same content)."""
    shards = sorted((home / "shards" / "brown").glob("*.parquet"))
    return [p for s in shards for p in (home / "scores").glob(f"*/{s.name}")]


def test_metrics_command_prints_and_stores_every_metric_with_its_budget(home, capsys):
    assert cli(_args(home, "metrics", home / "copy.jsonl", "--budget", "400")) == 0
    out = capsys.readouterr().out
    run_id = _run_id(out, "metrics")
    for name in METRICS:
        assert re.search(rf"^{name}\s.*\s400$", out, re.M), name  # one line each, budget last
    wh = db.warehouse_path(home)
    rows = db.query(wh, "SELECT * FROM metrics WHERE run_id = ?", [run_id])
    cand = rows[rows.comparison == "vs_reference"]
    assert sorted(cand.metric) == sorted(METRICS)
    assert set(cand.corpus) == {str(home / "copy.jsonl")} and set(cand.reference) == {"brown"}
    yardstick = rows[rows.comparison == "split_half"]
    assert sorted(yardstick.metric) == sorted(METRICS) and set(yardstick.corpus) == {"brown"}
    assert set(rows.budget) == {400}
    ci = cand.set_index("metric")
    for name in ("ppl_low_frac", "ppl_tail_frac", "ref_coverage_2"):
        assert ci.ci_low[name] <= ci.value[name] <= ci.ci_high[name]
    run = db.query(wh, "SELECT status, message FROM runs WHERE run_id = ?", [run_id]).iloc[0]
    assert run.status == "COMPLETED" and "--budget 400" in run.message
    assert f"input rows quarantined: {home / 'copy.jsonl'} 0, brown 0\n" in out
    docs = db.query(wh, "SELECT corpus, count(*) AS n FROM doc_scores WHERE run_id = ? "
                        "GROUP BY corpus", [run_id])
    assert dict(zip(docs.corpus, docs.n, strict=True)) == {"brown": 24, str(home / "copy.jsonl"): 24}
    # the candidate holds the reference's own documents: its comparison is as close as the
    # reference's split halves get, on every PPL and coverage metric
    assert ci.value["ppl_ks"] <= 0.5 and ci.value["ref_coverage_1"] >= 0.5
    folder = home / "runs" / run_id
    assert sorted(p.name for p in folder.glob("*.png")) == ["ngram-rank-frequency.png",
                                                            "ppl-brown.png"]


def test_second_metrics_call_does_no_model_work(home, capsys):
    assert cli(_args(home, "metrics", home / "copy.jsonl")) == 0
    capsys.readouterr()
    assert cli(_args(home, "metrics", home / "copy.jsonl")) == 0
    captured = capsys.readouterr()
    assert "model work: 0 tokens" in captured.out
    assert "scoring with the prior" not in captured.err and "cached scores" in captured.err
    # no --budget: the most both sides allow, the smaller half of the reference
    run_id = _run_id(captured.out, "metrics")
    budget = db.query(db.warehouse_path(home), "SELECT DISTINCT budget FROM metrics "
                                                "WHERE run_id = ?", [run_id]).budget
    halves = measure.ScoreFiles(_brown_scores(home)).scan(comparison_streams(3), None).samples
    assert list(budget) == [min(halves["half_a"].tokens, halves["half_b"].tokens)]


def test_validate_passes_with_exit_0(home, capsys):
    assert cli(_args(home, "validate", home / "copy.jsonl")) == 0
    out = capsys.readouterr().out
    run_id = _run_id(out, "validate")
    rows = db.query(db.warehouse_path(home), "SELECT * FROM validations WHERE run_id = ?", [run_id])
    assert len(rows) >= 12 and rows.success.all() and set(rows.suite) == {"coverage"}
    for r in rows.itertuples():  # every expectation printed with its observed value, threshold
        assert re.search(rf"^PASS {r.metric}\s+{r.observed:.4g}\s+{re.escape(r.threshold)}$", out,
                         re.M), r.metric
    assert "PASSED" in out
    assert f"input rows quarantined: {home / 'copy.jsonl'} 0, brown 0\n" in out


def test_validate_of_a_partial_input_that_passes_exits_4_saying_what_was_lost(home, capsys):
    partial = home / "copy-partial.jsonl"
    partial.write_text((home / "copy.jsonl").read_text() + '{"id": "x", "text": 3}\n{broken\n')
    assert cli(_args(home, "validate", partial)) == 4
    captured = capsys.readouterr()
    run_id = _run_id(captured.out, "validate")
    assert "PASSED" in captured.out  # the good rows are the copy's: the gate passes on them
    assert (f"input rows quarantined: {partial} 2, brown 0 (semisynth query \"SELECT file, line, "
            f"reason FROM quarantine WHERE run_id = '{run_id}'\")") in captured.out
    assert f"partial input: input rows quarantined: {partial} 2" in captured.err
    bad = db.query(db.warehouse_path(home), "SELECT line FROM quarantine WHERE run_id = ?", [run_id])
    assert sorted(bad.line) == [25, 26]
    assert cli(_args(home, "validate", partial, "--allow-partial")) == 0
    assert "accepted (--allow-partial)" in capsys.readouterr().err


def test_validate_fails_with_exit_1_naming_the_failing_expectations(home, capsys):
    assert cli(_args(home, "validate", home / "collapsed.jsonl")) == 1
    out = capsys.readouterr().out
    run_id = _run_id(out, "validate")
    wh = db.warehouse_path(home)
    rows = db.query(wh, "SELECT * FROM validations WHERE run_id = ?", [run_id])
    failing = rows[~rows.success]
    # (ppl_low_frac is 1 but not among them: at a dozen documents a side its noise slack
    # makes its bound vacuous, as the gate's calibration says)
    assert {"ppl_w1", "ppl_ks", "distinct_1", "distinct_2"} <= set(failing.metric)
    assert re.search(r"FAILED: \d+ of \d+ expectations failed", out)
    # its input lost a row too: the verdict (1) wins over partial input (4), and says so
    assert f"input rows quarantined: {home / 'collapsed.jsonl'} 1, brown 0 (" in out
    for r in failing.itertuples():
        assert f"  - {r.expectation}: observed {r.observed:.4g}" in out
        assert re.search(rf"^FAIL {r.metric}\s", out, re.M)
    assert db.query(wh, "SELECT status FROM runs WHERE run_id = ?", [run_id]).status[0] == "FAILED"
    # the bad row of the input went to quarantine, with its file and line
    bad = db.query(wh, "SELECT file, line, reason FROM quarantine WHERE run_id = ?", [run_id])
    assert list(bad.line) == [13] and bad.file[0].endswith("collapsed.jsonl")


def test_validate_quarantines_each_row_the_parser_refuses_and_measures_the_rest(home, capsys):
    """A NUL on line 1 lost the whole file as "UTF-16?"; a row nested 1,000 deep crashed
    the command (exit 3); an integer of 5,000 digits aborted it naming no row (exit 2)."""
    path = home / "copy-bounds.jsonl"
    path.write_bytes(b'{"id": "nul", "text": "x\x00"}\n' + (home / "copy.jsonl").read_bytes()
                     + b'{"id": "deep", "text": "t", "m": ' + b"[" * 1000 + b"]" * 1000 + b"}\n"
                     + b'{"id": "big", "text": "t", "n": ' + b"9" * 5000 + b"}\n")
    assert cli(_args(home, "validate", path)) == 4
    out = capsys.readouterr().out
    assert "PASSED" in out and f"input rows quarantined: {path} 3, brown 0 (" in out
    run_id = _run_id(out, "validate")
    bad = db.query(db.warehouse_path(home), "SELECT file, line, reason FROM quarantine WHERE "
                                            "run_id = ? ORDER BY line", [run_id])
    assert set(bad.file) == {str(path)}
    assert list(zip(bad.line, bad.reason, strict=True)) == [
        (1, "invalid json: a NUL byte, which JSON text never holds"),
        (26, "nested 1,001 levels deep (at most 32)"),
        (27, "an integer of 5,000 digits (at most 1,000)")]


def test_a_document_too_short_to_score_is_kept_and_left_out_of_the_ppl_metrics(home, capsys):
    """A one-token document's NaN perplexity made ppl_ks and ppl_w1 "missing" and failed
    the gate; now it has none (NULL) and the perplexity metrics measure the others."""
    lines = (home / "copy.jsonl").read_text().splitlines()[:8]
    path = home / "copy-short.jsonl"
    # fewer tokens than a reference half: the whole candidate, the short one included, is
    # in its sample
    path.write_text("\n".join([*lines, json.dumps({"id": "short", "text": "Hello"})]) + "\n")
    assert cli(_args(home, "validate", path)) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out
    run_id = _run_id(out, "validate")
    wh = db.warehouse_path(home)
    short = db.query(wh, "SELECT tokens, ppl FROM doc_scores WHERE run_id = ? AND doc_id = "
                         "'short'", [run_id]).iloc[0]
    assert short.tokens == 0 and np.isnan(short.ppl)  # NULL in the table
    budget = db.query(wh, "SELECT DISTINCT budget FROM metrics WHERE run_id = ? AND metric "
                          "LIKE 'distinct%'", [run_id]).budget
    assert list(budget) == [8 * 48 + 1]  # every candidate token, the short document's too
    rows = db.query(wh, "SELECT metric, value FROM metrics WHERE run_id = ?", [run_id])
    assert set(METRICS) <= set(rows.metric) and np.isfinite(rows.value).all()


@pytest.mark.parametrize("candidate, extra, message", [
    ("nosuch", [], "neither a corpus of the config"),
    ("{home}/missing/*.jsonl", [], "no document files match"),
    ("{home}/copy.jsonl", ["--suite", "nosuite"], "unknown suite 'nosuite'"),
    ("{home}/copy.jsonl", ["--budget", "0"], "positive"),
    ("{home}/copy.jsonl", ["--budget", "100000000"], "fewer than the budget"),
    ("{home}/empty.jsonl", [], "no usable documents"),
])
def test_validate_usage_and_input_errors_exit_2(home, capsys, candidate, extra, message):
    args = _args(home, "validate", candidate.format(home=home), *extra)
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


def test_refused_input_keeps_its_quarantine_rows_and_the_run_says_why(home, capsys):
    assert cli(_args(home, "validate", home / "empty.jsonl")) == 2
    assert "no usable documents" in capsys.readouterr().err
    wh = db.warehouse_path(home)
    run = db.query(wh, "SELECT run_id, status, message FROM runs ORDER BY started_at DESC "
                       "LIMIT 1").iloc[0]
    # refused for its input, not crashed: the user's to fix, and no result of the warehouse
    assert run.status == "REFUSED", run
    assert run.message.startswith("input refused: ") and "no usable documents" in run.message
    finished = db.query(wh, "SELECT run_id FROM finished_runs").run_id
    assert run.run_id not in set(finished)
    bad = db.query(wh, "SELECT file, line, reason FROM quarantine WHERE run_id = ?", [run.run_id])
    assert list(bad.line) == [1] and bad.file[0].endswith("empty.jsonl")
    out = home / "refused.html"
    assert cli(["--data-root", str(home), "report", run.run_id, "--out", str(out)]) == 0
    assert "This run is REFUSED</strong>: it stopped on its input" in out.read_text()


def test_missing_arguments_exit_2(home, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["--data-root", str(home), "validate", str(home / "copy.jsonl")])  # no --reference
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli(_args(home, "metrics", home / "copy.jsonl", "--budget", "lots"))
    assert exc.value.code == 2


def test_measure_is_the_flows_computation():
    """measure() gives the rows the flow stores: yardstick, comparison, edit_rate."""
    rng = np.random.default_rng(0)

    def corpus(n, edited=0):
        docs = [rng.integers(0, 8, rng.integers(20, 40)) for _ in range(n)]  # n-grams repeat
        return measure.Scored(docs, rng.lognormal(3, 0.4, n), sum(map(len, docs)), edited)

    corpora = {"ref": corpus(30, edited=7), "ed": corpus(20), "other": corpus(25)}
    cfg = MetricsConfig(bootstrap=10, budget_tokens=None)
    pairs = {"ed": "ref", "other": "ref"}
    measured = measure.measure(corpora, pairs, cfg, seed=1, edited_from={"ed": "ref"})
    rows, budget = measured.rows, measured.budget
    halves = corpora["ref"].scan(comparison_streams(1), None).samples
    assert budget == min(halves["half_a"].tokens, halves["half_b"].tokens,
                         corpora["ed"].tokens, corpora["other"].tokens)
    split = [r for r in rows if r["comparison"] == "split_half"]
    assert {(r["corpus"], r["reference"]) for r in split} == {("ref", "ref")}
    assert {r["metric"] for r in split} == {r["metric"] for r in rows if r["corpus"] == "other"}
    assert {r["budget"] for r in rows if r["metric"] != "edit_rate"} == {budget}
    ed = {r["metric"]: r for r in rows if r["corpus"] == "ed"}
    assert ed["edit_rate"]["value"] == 7 / corpora["ref"].scored_tokens
    assert ed["edit_rate"]["budget"] == corpora["ref"].scored_tokens
    assert "edit_rate" not in {r["metric"] for r in rows if r["corpus"] == "other"}
    with pytest.raises(ValueError, match="fewer than the budget"):
        measure.measure(corpora, {"ed": "ref"}, cfg, seed=1, budget=10_000)
    # a cap bounds the budget and what is held of each corpus, and changes no value at the
    # budget it allows
    capped = measure.measure(corpora, pairs, cfg.model_copy(update={"budget_tokens": 120}),
                             seed=1, edited_from={"ed": "ref"})
    assert capped.budget == 120
    assert capped.rows == measure.measure(corpora, pairs, cfg, seed=1, budget=120,
                                          edited_from={"ed": "ref"}).rows
    for shown in capped.shown.values():
        assert shown.documents < 120 / 20 + 1  # documents of at least 20 tokens up to the cap


def test_estimate_finds_half_of_a_half_synthetic_file(home, brown_shards, capsys):
    """Six Brown documents the reference does not hold, six repetitive 'synthetic' ones like
    the synthetic reference's (but not in it): the estimate is near 0.5 and covers it."""
    def repetitive(i: int) -> str:
        return f"The cat number {i} sat on the mat and the dog number {i} sat on the rug. " * 6

    with gzip.open(brown_shards[1], "rt") as f:
        fresh = [json.loads(line) for line in f][:6]
    (home / "syn_ref.jsonl").write_text("".join(
        json.dumps({"id": f"s{i}", "text": repetitive(i)}) + "\n" for i in range(100, 114)))
    half = [{"id": d["id"], "text": d["text"]} for d in fresh]
    half += [{"id": f"h{i}", "text": repetitive(i)} for i in range(6)]
    (home / "half.jsonl").write_text("".join(json.dumps(d) + "\n" for d in half))
    args = ["--data-root", str(home), "estimate", str(home / "half.jsonl"), "--human", "brown",
            "--synthetic", str(home / "syn_ref.jsonl"), "--config", str(home / "config.yaml")]
    assert cli([*args, "--format", "json"]) == 0
    estimate = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert estimate["documents"] == 12
    assert abs(estimate["synthetic_share"] - 0.5) < 0.2
    assert estimate["ci_low"] <= 0.5 <= estimate["ci_high"]
    stored = db.query(db.warehouse_path(home), "SELECT value, ci_low FROM metrics WHERE run_id = ? "
                      "AND metric = 'synthetic_share'", [estimate["run_id"]])
    assert stored.value.tolist() == [estimate["synthetic_share"]]
    assert estimate["quarantined"] == {"candidate": 0, "human": 0, "synthetic": 0}
    # the same documents and a bad row: estimated on the good ones, and exit 4 (partial input)
    (home / "half-partial.jsonl").write_text((home / "half.jsonl").read_text() + "{broken\n")
    args[3] = str(home / "half-partial.jsonl")
    assert cli([*args, "--format", "json"]) == 4
    partial = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert partial["quarantined"] == {"candidate": 1, "human": 0, "synthetic": 0}
    assert partial["documents"] == 12 and abs(partial["synthetic_share"] - 0.5) < 0.2
    # the human reference as the synthetic one too: a usage error, before any model work
    assert cli([*args[:-4], "--synthetic", "brown", "--config", str(home / "config.yaml")]) == 2
