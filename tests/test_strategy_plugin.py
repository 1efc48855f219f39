"""An edit strategy added from one file (tests/plugins/second_choice_strategy.py), installed
as another package would install it: an entry point in the group
``semisynth.edit_strategies`` (a dist-info folder on the path, as pip writes one). Then it
works end to end: config validation, the score cache key, `semisynth edit` (its options and
its output, checked against the prior's own probabilities), and a nightly flow run that
records its edits in the warehouse and gates and releases the edited corpus."""

import gzip
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from semisynth import strategy_registry as base
from semisynth.cli import main as cli
from semisynth.config import EditConfig, PriorConfig, config_from_tree
from semisynth.strategy_registry import ENTRY_POINT_GROUP, strategies
from semisynth.tasks.score import score_key

PLUGINS = Path(__file__).resolve().parent / "plugins"
MODULE = "second_choice_strategy"
SEMISYNTH = Path(sys.executable).with_name("semisynth")
THRESHOLD, DROP_BELOW = 0.9, 0.0005
# the flow's: milder edits, which its gate passes at 32 documents. Second choices at 0.9, or
# dropping the tokens below p 0.0001 (9% of them), move the perplexity distribution past
# ppl_ks and ppl_w1: blocked, as they should be.
FLOW_THRESHOLD, FLOW_DROP_BELOW = 0.99, 0.0
CORPORA = {"ref": {"role": "reference", "paths": ["ref.jsonl"]}}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin's folder and an entry point naming its module on sys.path and on
    PYTHONPATH (for `semisynth` processes and the flow's Dask workers); afterwards semisynth
    has never heard of it (registry, path, environment and module as they were)."""
    site = tmp_path_factory.mktemp("site")
    info = site / "semisynth_second_choice-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: semisynth-second-choice\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nsecond_choice = {MODULE}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "_REGISTRY", dict(base._REGISTRY))
        mp.syspath_prepend(str(PLUGINS))
        mp.syspath_prepend(str(site))
        path = os.pathsep.join(p for p in (str(site), str(PLUGINS), os.environ.get("PYTHONPATH"))
                               if p)
        mp.setenv("PYTHONPATH", path)
        yield site
    sys.modules.pop(MODULE, None)


def test_without_its_entry_point_the_strategy_is_unknown(tmp_path):
    assert "second_choice" not in strategies()
    with pytest.raises(ValueError, match=r"cfg.yaml: edit.strategy: no edit strategy "
                                         r"'second_choice'; registered: .*up_revise"):
        config_from_tree({"data_root": str(tmp_path), "corpora": CORPORA,
                          "edit": {"strategy": "second_choice"}}, source="cfg.yaml")


def test_the_config_validates_the_plugins_parameters_by_its_own_model(plugin, tmp_path):
    assert list(strategies())[-1] == "second_choice"  # after the built-in ones
    tree = {"data_root": str(tmp_path), "corpora": CORPORA,
            "edit": {"strategy": "second_choice", "threshold": 0.95, "drop_below": 0.001}}
    edit = config_from_tree(tree).edit
    assert type(edit.params).__name__ == "SecondChoiceParams"
    assert edit.model_dump() == {"strategy": "second_choice", "threshold": 0.95,
                                 "drop_below": 0.001}
    assert edit.build().resolved() == {"threshold": 0.95, "drop_below": 0.001}
    assert edit.effective_beta is None  # its draw has no temperature
    for key, value, problem in [
        ("drop_below", 0.7, "edit.drop_below: Input should be less than 0.5 (got 0.7)"),
        ("threshold", 0.3, "edit.threshold: Input should be greater than 0.5 (got 0.3)"),
        ("top_k", 3, "edit.top_k: not a parameter of strategy 'second_choice' (its parameters: "
                     "threshold, drop_below)"),
    ]:
        bad = {**tree, "edit": {**tree["edit"], key: value}}
        with pytest.raises(ValueError) as info:
            config_from_tree(bad, source="cfg.yaml")
        assert str(info.value) == f"cfg.yaml: {problem}"


def test_the_score_key_names_the_plugin_and_each_of_its_parameters(plugin):
    prior = PriorConfig(precision="float32")

    def key(**edit):
        return score_key("m", prior, EditConfig(**edit), 1)

    keys = {key(strategy="second_choice"), key(strategy="second_choice", threshold=0.95),
            key(strategy="second_choice", drop_below=0.01), key(strategy="up_revise"),
            key(strategy="up_revise", threshold=0.9)}
    assert len(keys) == 5
    # the same settings, the same key (the defaults written out or not)
    assert key(strategy="second_choice") == key(strategy="second_choice", threshold=0.9,
                                                 drop_below=0.0)


def test_edit_help_in_a_new_process_offers_the_plugin_and_its_options(plugin):
    proc = subprocess.run([str(SEMISYNTH), "edit", "--help"], capture_output=True, text=True,
                          timeout=120, env=os.environ, check=True)
    out = " ".join(proc.stdout.split())
    assert "<up_revise|filtering|low_drop_up_revise|second_choice>" in out
    assert ("--drop-below <float> Drop a token where its probability is strictly smaller "
            "(0: none). (strategy second_choice) [default: 0.0]") in out
    # both kinds of strategy take --threshold, with defaults of their own
    assert "[default: (per strategy: up_revise 0.99, filtering 0.99, low_drop_up_revise " \
           "0.99, second_choice 0.9)]" in out
    # an option only ToEdit's strategies take says so
    assert "--top-k <int> Redraw from the prior's k most probable tokens (at most its " \
           "vocabulary). (strategy up_revise, filtering, low_drop_up_revise)" in out


@pytest.mark.parametrize("options, problem", [
    (["--drop-below", "0.7"], "edit: drop_below: Input should be less than 0.5 (got 0.7)"),
    (["--top-k", "3"], "edit: top_k: not a parameter of strategy 'second_choice'"),
    (["--low-threshold", "0.01"], "edit: low_threshold: not a parameter of strategy"),
])
def test_edit_refuses_an_option_the_strategy_does_not_take_or_a_bad_value(
        plugin, tmp_path, capsys, options, problem):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "text": "The jury said the election was fair."}\n')
    out = tmp_path / "out.jsonl"
    code = cli(["--data-root", str(tmp_path / "root"), "edit", str(source), str(out),
                "--strategy", "second_choice", *options])
    assert code == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err
    assert not out.exists()


def brown_docs(brown_shards, n: int) -> list[dict]:
    with gzip.open(brown_shards[0], "rt") as lines:
        return [json.loads(line) for line in itertools.islice(lines, n)]


def expected_edit(prior, text: str, max_tokens: int) -> tuple[list[int], int, int, int]:
    """second_choice worked out from the prior's full softmax in one plain forward pass:
    (edited token ids, revised, dropped, positions whose log-prob lies within 1e-3 of a
    threshold's, where the engine's float32 arithmetic may decide the other way)."""
    ids = prior.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    with torch.inference_mode():
        logits = prior.model(torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1)
    targets = torch.tensor(ids[1:])
    p = logp.gather(1, targets[:, None]).squeeze(1).exp()
    second = logp.topk(2, dim=-1).indices[:, 1]
    revised, dropped = p > THRESHOLD, p < DROP_BELOW
    edited = [ids[0]] + [int(s) if r else t for t, s, r in zip(ids[1:], second, revised,
                                                                  strict=True)]
    kept = [t for t, d in zip(edited, [False, *dropped.tolist()], strict=True) if not d]
    logp_t = p.log()
    near = int(sum(((logp_t - math.log(t)).abs() < 1e-3).sum() for t in (THRESHOLD, DROP_BELOW)))
    return kept, int(revised.sum()), int(dropped.sum()), near


def test_edit_writes_what_the_plugin_decides(plugin, tmp_path, prior_folder, prior_f32,
                                             brown_shards, capsys):
    docs = brown_docs(brown_shards, 6)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    code = cli(["--data-root", str(tmp_path / "root"), "edit", str(source), str(out),
                "--model", str(prior_folder), "--precision", "float32", "--max-tokens", "128",
                "--strategy", "second_choice", "--threshold", str(THRESHOLD),
                "--drop-below", str(DROP_BELOW)])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [d["id"] for d in docs]
    compared = 0
    for doc, row in zip(docs, rows, strict=True):
        kept, revised, dropped, near = expected_edit(prior_f32, doc["text"], 128)
        # every revised token changes (its second choice is another token), none is both
        assert abs(row["edited_tokens"] - revised) <= near, (doc["id"], row, revised)
        assert abs(row["dropped_tokens"] - dropped) <= near, (doc["id"], row, dropped)
        if not near:
            assert row["text"] == prior_f32.tokenizer.decode(kept)
            compared += 1
    assert compared >= 4
    assert sum(r["edited_tokens"] for r in rows) > 20 and sum(r["dropped_tokens"] for r in rows)


def test_a_flow_records_gates_and_releases_the_plugins_edits(plugin, tmp_path, prefect_server,
                                                             prior_folder, brown_shards):
    from semisynth.flows.nightly import run
    from semisynth.warehouse import db

    config = {
        "name": "plugin", "data_root": str(tmp_path), "seed": 11, "shard_docs": 16,
        "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": 128},
        "edit": {"strategy": "second_choice", "threshold": FLOW_THRESHOLD,
                 "drop_below": FLOW_DROP_BELOW},
        "corpora": {
            "brown": {"role": "reference", "paths": [str(p) for p in brown_shards[:2]],
                      "limit_docs": 32},
            "brown_second": {"edited_from": "brown", "reference": "brown", "release": True},
        },
        "metrics": {"bootstrap": 50},
    }
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run(str(path))  # the score+edit tasks run in Dask worker processes

    wh = db.warehouse_path(tmp_path)
    edits = db.query(wh, "SELECT strategy, params, threshold, top_k, beta, "
                         "sum(edited_tokens) AS edited, sum(dropped_tokens) AS dropped, "
                         "count(*) AS docs FROM edits WHERE corpus = 'brown_second' "
                         "GROUP BY ALL")
    assert len(edits) == 1
    row = edits.iloc[0]
    assert row.strategy == "second_choice"
    assert json.loads(row.params) == {"threshold": FLOW_THRESHOLD, "drop_below": FLOW_DROP_BELOW}
    assert row.threshold == FLOW_THRESHOLD and pd.isna(row.top_k) and pd.isna(row.beta)
    assert row.docs == 32 and row.edited > 0 and row.dropped == 0
    rate = db.query(wh, "SELECT value FROM metrics WHERE corpus = 'brown_second' AND "
                        "metric = 'edit_rate'").value
    assert len(rate) == 1 and 0 < rate.iloc[0] < 1
    # the gate judged the edited corpus; it passed, so it is released with its strategy
    assert result["gates"] == {"brown_second": True}, result.get("failures")
    assert result["state"] == "COMPLETED"
    folder = Path(result["releases"]["brown_second"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["parameters"]["edit"] == {
        "strategy": "second_choice", "threshold": FLOW_THRESHOLD, "drop_below": FLOW_DROP_BELOW}
    assert manifest["parameters"]["beta"] is None
    card = (folder / "README.md").read_text()
    assert (f"- strategy `second_choice`, threshold {FLOW_THRESHOLD}, "
            f"drop_below {FLOW_DROP_BELOW}, seed 11") in card
