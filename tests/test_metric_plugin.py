"""A metric added from one file (tests/metric_plugins/ngram_entropy.py), end to end: the
config that lists it takes its gate key, `semisynth validate` stores its rows, the GX suite
has an expectation per order that passes a human candidate and fails a collapsed one, and
the report and the run summary show it. The real prior, DuckDB and Great Expectations."""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from semisynth import metric_registry
from semisynth.cli import main as cli
from semisynth.config import load_config
from semisynth.quality import report, thresholds
from semisynth.warehouse import db

PLUGIN = "metric_plugins.ngram_entropy"
NAMES = {f"ngram_entropy_{n}": n for n in (1, 2, 3)}
DEFICIT = 0.75  # the config's value of the plug-in's key (its default is 0.5)


@pytest.fixture
def plugin():
    """tests/ on the import path for the config's `metrics.plugins`; afterwards the plug-in
    is removed from the registry and from sys.modules, so the other tests of the session
    see the built-in metrics only (and a later import registers it again)."""
    sys.path.insert(0, str(Path(__file__).parent))
    assert metric_registry.lookup("ngram_entropy_1") is None  # nothing registered it yet
    try:
        yield PLUGIN
    finally:
        sys.path.remove(str(Path(__file__).parent))
        if metric_registry.lookup("ngram_entropy_1") is not None:
            metric_registry.unregister("ngram_entropy")
        sys.modules.pop(PLUGIN, None)


def _config(root: Path, prior: Path | None = None, plugins=(PLUGIN,), gate=None) -> Path:
    config = {
        "name": "plugin", "seed": 3,
        "prior": {"model": str(prior or "default"), "precision": "float32", "max_tokens": 48},
        "corpora": {"brown": {"role": "reference", "paths": [str(root / "brown24.jsonl")]}},
        "metrics": {"bootstrap": 20, "plugins": list(plugins)},
        "gate": gate if gate is not None else {"ngram_entropy_max_deficit": DEFICIT},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_plugins_gate_key_is_valid_only_with_the_plugin_and_checked(plugin, tmp_path):
    with pytest.raises(ValueError, match=r": gate\.ngram_entropy_max_deficit: Extra inputs "
                                         r"are not permitted \(got 0\.75\)$"):
        load_config(_config(tmp_path, plugins=()))
    assert metric_registry.lookup("ngram_entropy_1") is None
    with pytest.raises(ValueError, match=r": gate\.ngram_entropy_max_deficit: Input should be "
                                         r"greater than or equal to 0 \(got -1\)$"):
        load_config(_config(tmp_path), ["gate.ngram_entropy_max_deficit=-1"])
    cfg = load_config(_config(tmp_path, gate={}))  # its declared default
    assert cfg.gate.setting("ngram_entropy_max_deficit") == 0.5
    with pytest.raises(ValueError, match=r"metrics\.plugins: Value error, cannot import the "
                                         r"plug-in module 'metric_plugins\.nowhere'"):
        load_config(_config(tmp_path, plugins=["metric_plugins.nowhere"]))


@pytest.fixture(scope="module")
def home(tmp_path_factory, brown_shards, prior_folder):
    """24 Brown documents as the reference, the same documents as a candidate file, and a
    collapsed candidate (one sentence repeated)."""
    import gzip

    root = tmp_path_factory.mktemp("plugin")
    with gzip.open(brown_shards[0], "rt") as f:
        docs = [json.loads(line) for line in f][:24]
    lines = "".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs)
    (root / "brown24.jsonl").write_text(lines)
    (root / "copy.jsonl").write_text(lines)
    (root / "collapsed.jsonl").write_text("".join(
        json.dumps({"id": f"c{i}", "text": "The cat sat on the mat. " * 12}) + "\n"
        for i in range(12)))
    return root, prior_folder


def _validate(root: Path, candidate: str, capsys) -> tuple[int, str, str]:
    code = cli(["--data-root", str(root), "validate", str(root / candidate), "--reference",
                "brown", "--config", str(root / "config.yaml")])
    out = capsys.readouterr().out
    return code, out, re.search(r"run (validate-[0-9T-]+)", out).group(1)


def _gx_result(root: Path, run_id: str) -> dict:
    """GX's stored validation result of the run: expectation column -> its result."""
    [stored] = (root / "gx" / "gx" / "uncommitted" / "validations" / "coverage"
                / run_id).glob("*/*.json")
    return {r["expectation_config"]["kwargs"]["column"]: r
            for r in json.loads(stored.read_text())["results"]}


def test_a_metric_from_one_file_is_measured_stored_gated_and_reported(plugin, home, capsys):
    root, prior = home
    _config(root, prior)
    wh = db.warehouse_path(root)

    # a human candidate (the reference's own documents) passes, the plug-in's orders included
    code, out, run_id = _validate(root, "copy.jsonl", capsys)
    assert code == 0, out
    rows = db.query(wh, "SELECT comparison, metric, n, value FROM metrics WHERE run_id = ? "
                        "AND metric LIKE 'ngram_entropy%'", [run_id])
    for comparison in ("vs_reference", "split_half"):
        side = rows[rows.comparison == comparison]
        assert dict(zip(side.metric, side.n, strict=True)) == NAMES, comparison
        assert (side.value > 0).all()
    yard = dict(zip(rows[rows.comparison == "split_half"].metric,
                    rows[rows.comparison == "split_half"].value, strict=True))
    gated = db.query(wh, "SELECT metric, threshold, success FROM validations WHERE run_id = ? "
                         "AND metric LIKE 'ngram_entropy%' ORDER BY metric", [run_id])
    assert list(gated.metric) == sorted(NAMES) and gated.success.all()
    for r in gated.itertuples():  # the bound is Y less the config's deficit (no CI: no noise)
        y = yard[r.metric]
        assert r.threshold == thresholds.threshold_text((y - DEFICIT - 1e-12 * abs(y), None))
        assert re.search(rf"^PASS {r.metric}\s", out, re.M)
    assert all(_gx_result(root, run_id)[m]["success"] for m in NAMES)

    # the collapsed candidate fails on it: GX's expectations for it are failed ones
    code, out, run_id = _validate(root, "collapsed.jsonl", capsys)
    assert code == 1, out
    failing = db.query(wh, "SELECT metric, observed, threshold FROM validations WHERE "
                           "run_id = ? AND NOT success", [run_id])
    failed = {r.metric: r for r in failing.itertuples()}
    assert set(NAMES) <= set(failed)
    gx = _gx_result(root, run_id)
    for m in NAMES:
        assert gx[m]["success"] is False
        assert gx[m]["result"]["observed_value"] == pytest.approx(failed[m].observed)
        assert failed[m].observed < float(failed[m].threshold.removeprefix(">= "))
        assert f"  - {m} >= " in out  # named among the failing expectations

    # the report shows its rows after the built-in metrics, and its gate verdicts
    assert cli(["--data-root", str(root), "report", run_id]) == 0
    capsys.readouterr()
    page = (root / "runs" / run_id / "report.html").read_text()
    metrics_part = page[page.index("<h2>Metrics</h2>"):page.index("<h2>Plots</h2>")]
    positions = [metrics_part.index(f'<td class="l">{m}</td>') for m in ("js_3", *NAMES)]
    assert positions == sorted(positions)
    gate_part = page[page.index("<h2>Gate verdicts</h2>"):page.index("<h2>Metrics</h2>")]
    assert "failing: " in gate_part and "ngram_entropy_1" in gate_part.split("failing: ")[1]
    for m in NAMES:
        assert re.search(rf'<tr class="fail"><td class="l">{m} &gt;= [^<]+</td><td class="l">'
                         rf"{m}</td>", gate_part), m

    # the run summary has a column for its declared summary order
    values = db.query(wh, "SELECT metric, value FROM metrics WHERE run_id = ? AND "
                          "comparison = 'vs_reference'", [run_id])
    summary = report.summary_markdown(run_id, 0, {"collapsed": dict(zip(
        values.metric, values.value, strict=True))}, {}, {}, [])
    header, _, row = summary.split("## Metrics per corpus (vs its reference)\n\n")[1].split("\n")[:3]
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    entropy_2 = values.set_index("metric").value["ngram_entropy_2"]
    assert cells[columns.index("ngram_entropy_2")] == f"{entropy_2:.4g}"
