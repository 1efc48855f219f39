"""Parameters are checked where they enter: the config models (and with them every
override and the CLI options built on them) refuse values that would crash a task or
silently change the method, and every error names the file, and the key or the line."""

import pytest

from semisynth.cli import main
from semisynth.config import MAX_DOC_TOKENS, EditConfig, PriorConfig, load_config

CONFIG = """\
name: t
prior:
  max_tokens: 64
corpora:
  ref:
    role: reference
    paths: ["ref/*.jsonl"]
  mix:
    mix: {ref: 1.0}
    reference: ref
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("override, key", [
    ("edit.threshold=-1", "edit.threshold"),  # would redraw nearly every token
    ("edit.threshold=0", "edit.threshold"),
    ("edit.threshold=1.5", "edit.threshold"),
    ("edit.low_threshold=-0.1", "edit.low_threshold"),
    ("edit.low_threshold=1", "edit.low_threshold"),
    ("edit.top_k=0", "edit.top_k"),
    ("edit.beta=-1", "edit.beta"),  # would silently prefer the least likely tokens
    ("edit.beta=0", "edit.beta"),  # would silently fall back to the default beta
    ("prior.max_tokens=0", "prior.max_tokens"),
    ("prior.batch_tokens=0", "prior.batch_tokens"),
    ("prior.window=1", "prior.window"),
    ("prior.max_doc_tokens=0", "prior.max_doc_tokens"),
    ("shard_docs=0", "shard_docs"),
    ("dask_workers=0", "dask_workers"),
    ("metrics.budget_tokens=0", "metrics.budget_tokens"),
    ("metrics.ngram_orders=[]", "metrics.ngram_orders"),
    ("metrics.ngram_orders=[2, 0]", "metrics.ngram_orders.1"),
    ("metrics.js_buckets=0", "metrics.js_buckets"),
    ("corpora.ref.limit_docs=0", "corpora.ref.limit_docs"),
    ("gate.ppl_ks_max_excess=-0.1", "gate.ppl_ks_max_excess"),
    ("gate.edit_rate_max=2", "gate.edit_rate_max"),
])
def test_out_of_range_values_are_refused_naming_file_and_key(config_file, override, key):
    with pytest.raises(ValueError) as info:
        load_config(config_file, [override])
    message = str(info.value)
    assert message.startswith(f"{config_file}: {key}: "), message
    value = override.split("=", 1)[1].removeprefix("[2, ").removesuffix("]")
    assert message.endswith(f"(got {value})") or value == "[", message


@pytest.mark.parametrize("overrides, problem", [
    (["edit.strategy=low_drop_up_revise", "edit.low_threshold=0.995"],
     "low_threshold (0.995) must be below threshold (0.99)"),
    (["gate.edit_rate_min=0.5", "gate.edit_rate_max=0.2"], "edit_rate_min (0.5) is above"),
    (["corpora.mix.mix={ref: 1.5, other: -0.5}"], "mix shares must lie in [0, 1]"),
])
def test_inconsistent_values_are_refused(config_file, overrides, problem):
    with pytest.raises(ValueError, match=str(config_file)) as info:
        load_config(config_file, overrides)
    assert problem in str(info.value)


def test_limits_themselves_are_accepted(config_file):
    cfg = load_config(config_file, ["edit.threshold=1", "edit.low_threshold=0", "edit.top_k=1",
                                    "edit.beta=0.01", "prior.max_doc_tokens=null",
                                    "shard_docs=1", "prior.window=2"])
    assert (cfg.edit.params.threshold, cfg.edit.params.low_threshold,
            cfg.prior.max_doc_tokens) == (1, 0, None)
    # by default one document is bounded, max_tokens or not
    assert load_config(config_file).prior.max_doc_tokens == MAX_DOC_TOKENS == 100_000
    assert PriorConfig().max_doc_tokens == MAX_DOC_TOKENS


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: t\nprior:\n  max_tokens: [64\ncorpora: {}\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    where, problem = str(info.value).split(": ", 1)
    assert where == f"{path}:4:8"  # the line and column PyYAML gives up at, 1-based
    assert "expected ',' or ']'" in problem
    tab = tmp_path / "tab.yaml"
    tab.write_text("name: t\n\tprior: {}\n")
    with pytest.raises(ValueError, match=rf"^{tab}:2:1: "):
        load_config(tab)


def test_bad_override_and_bad_top_level_are_value_errors(config_file, tmp_path):
    with pytest.raises(ValueError, match=r"override 'edit.top_k=\[': "):
        load_config(config_file, ["edit.top_k=["])
    with pytest.raises(ValueError, match="edit is not a section"):
        load_config(config_file, ["edit=3", "edit.top_k=2"])
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=rf"^{listed}: the config must be a mapping"):
        load_config(listed)


def test_edit_config_refuses_what_the_cli_passes_on():
    for bad in ({"top_k": 0}, {"threshold": -1.0}, {"beta": 0.0}, {"beta": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EditConfig(**bad)


@pytest.mark.parametrize("option, value", [("--top-k", "0"), ("--threshold", "-1"),
                                           ("--beta", "0"), ("--beta", "-1")])
def test_edit_command_exits_2_on_a_bad_parameter(tmp_path, capsys, option, value):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "text": "The jury said the election was fair."}\n')
    out = tmp_path / "out.jsonl"
    code = main(["--data-root", str(tmp_path / "root"), "edit", str(source), str(out),
                 option, value])
    assert code == 2
    err = capsys.readouterr().err
    assert option.removeprefix("--").replace("-", "_") in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("synthetic", ["ref", "cand"])
def test_a_synthetic_reference_must_be_another_corpus(tmp_path, synthetic):
    from semisynth.config import config_from_tree

    corpora = {"ref": {"role": "reference", "paths": ["r.jsonl"]},
               "cand": {"paths": ["c.jsonl"], "reference": "ref", "synthetic_reference": synthetic}}
    with pytest.raises(ValueError, match="synthetic_reference must be another corpus"):
        config_from_tree({"data_root": str(tmp_path), "corpora": corpora})
