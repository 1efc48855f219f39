"""Names that become folders, release paths and push destinations (the config's, its
corpora's, the experiment's and its arms', a release's): one rule, `semisynth.names`;
a name outside it is refused with exit 2, naming its key, before any work starts."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from semisynth.cli import main as cli
from semisynth.commands import narrowed_config
from semisynth.config import load_config, load_experiment_config
from semisynth.errors import BadName
from semisynth.names import check_name, is_plain_name
from semisynth.tasks import release
from semisynth.warehouse import db, records

BAD = ["../../escaped", "..", ".hidden", "-rf", "a/b", "a\\b", "a b", "", "x" * 129, "brüt",
       "tab\t", "line\n"]
GOOD = ["brown", "web.en-2024_01", "_scratch", "v0001", "x" * 128, "demo-brown_toedit", "1"]


def test_one_rule_for_every_name():
    for name in BAD:
        assert not is_plain_name(name), name
        with pytest.raises(BadName, match=r"^corpora\.x: .* is not a plain name"):
            check_name(name, "corpora.x")
    for name in GOOD:
        assert check_name(name, "name") == name
    assert not is_plain_name(None) and not is_plain_name(3)


def _pipeline(**changes) -> dict:
    """A valid config (a reference, an edited corpus released, a mixture) with ``changes``
    (dotted key -> value; a corpus key renamed with ``rename``)."""
    tree = {"name": "demo.v2", "corpora": {
        "web.en-2024_01": {"role": "reference", "paths": ["web/*.jsonl"]},
        "web_toedit": {"edited_from": "web.en-2024_01", "reference": "web.en-2024_01",
                       "release": True},
        "_side": {"role": "monitored", "paths": ["side.jsonl"], "reference": "web.en-2024_01"},
        "mix-50": {"mix": {"web.en-2024_01": 0.5, "_side": 0.5}, "reference": "web.en-2024_01",
                   "synthetic_reference": "_side"}}}
    for dotted, value in changes.items():
        if dotted == "rename":
            old, new = value
            tree["corpora"] = {new if k == old else k: c for k, c in tree["corpora"].items()}
            continue
        *parents, leaf = dotted.split("/")
        node = tree
        for key in parents:
            node = node[key]
        node[leaf] = value
    return tree


BAD_CONFIGS = [  # (key the error names, the config's change)
    ("name", {"name": "../evil"}),
    ("name", {"name": ".demo"}),
    ("corpora.../../escaped", {"rename": ("_side", "../../escaped")}),
    ("corpora./abs", {"rename": ("web_toedit", "/abs")}),
    ("corpora.mix-50.reference", {"corpora/mix-50/reference": "../web"}),
    ("corpora.web_toedit.edited_from", {"corpora/web_toedit/edited_from": "web/../x"}),
    ("corpora.mix-50.synthetic_reference", {"corpora/mix-50/synthetic_reference": ".side"}),
    ("corpora.mix-50.mix.a/b", {"corpora/mix-50/mix": {"web.en-2024_01": 0.5, "a/b": 0.5}}),
    # releases/<name>-<corpus>/: each name plain, but together too long for one component
    ("corpora.web_toedit.release", {"name": "n" * 120}),
]


@pytest.mark.parametrize("key, changes", BAD_CONFIGS, ids=[k for k, _ in BAD_CONFIGS])
def test_a_config_name_outside_the_rule_exits_2_naming_its_key_before_any_work(
        tmp_path, capsys, key, changes):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_pipeline(**changes)))
    root = tmp_path / "root"
    assert cli(["--data-root", str(root), "run", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"error: {config}: {key}: " in err and "Traceback" not in err
    assert not root.exists()  # no shard folder, no warehouse, no lock


def test_the_measuring_commands_check_the_configs_names_too(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_pipeline(rename=("_side", "../../escaped"))))
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "text": "some text"}) + "\n")
    root = tmp_path / "root"
    assert cli(["--data-root", str(root), "validate", str(tmp_path / "c.jsonl"), "--reference",
                "web.en-2024_01", "--config", str(config)]) == 2
    assert f"{config}: corpora.../../escaped: " in capsys.readouterr().err
    assert not root.exists()


def test_names_with_dots_dashes_and_underscores_are_accepted(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_pipeline()))
    cfg = load_config(config, [f"data_root={tmp_path}"])
    assert cfg.shard_dir("web.en-2024_01") == tmp_path / "shards" / "web.en-2024_01"
    assert cfg.release_name("web_toedit") == "demo.v2-web_toedit"


def test_files_a_command_measures_keep_their_path_as_name_and_share_one_folder(tmp_path):
    """`metrics FILE --reference FILE`: a corpus named by the path as given (so the
    warehouse's rows say which file), never a folder of its own."""
    cfg = load_config(_write(tmp_path / "config.yaml", _pipeline()), [f"data_root={tmp_path}"])
    (tmp_path / "in").mkdir()
    for name in ("ref.jsonl", "cand.jsonl"):
        (tmp_path / "in" / name).write_text(json.dumps({"id": "a", "text": "t"}) + "\n")
    ref, cand = str(tmp_path / "in" / "ref.jsonl"), str(tmp_path / "in" / "c*.jsonl")
    sub = narrowed_config(cfg, ref, {cand: "candidate"})
    assert list(sub.corpora) == [ref, cand] and sub.corpora[cand].reference == ref
    for name in (ref, cand):
        assert sub.shard_dir(name) == tmp_path / "shards" / "_files"


def _write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


def _experiment(**changes) -> dict:
    return {"name": "collapse.demo-1", "human": {"paths": ["h.jsonl"]},
            "synthetic": {"paths": ["s.jsonl"]}, "heldout": {"paths": ["x.jsonl"]},
            "train_tokens": 100, "seeds": [1], "arms": {"syn.25": {"synthetic_share": 0.25}},
            **changes}


@pytest.mark.parametrize("key, changes", [
    ("name", {"name": "../collapse"}),
    ("arms.../x", {"arms": {"../x": {}}}),
    ("arms.human-pool", {"arms": {"human-pool": {}}}),  # a name the experiment's corpora take
])
def test_an_experiment_name_outside_the_rule_exits_2_naming_its_key(tmp_path, capsys, key, changes):
    config = _write(tmp_path / "experiment.yaml", _experiment(**changes))
    root = tmp_path / "root"
    assert cli(["--data-root", str(root), "experiment", str(config)]) == 2
    assert f"error: {config}: {key}: " in capsys.readouterr().err
    assert not root.exists()


def test_experiment_names_with_dots_and_dashes_are_accepted(tmp_path):
    ecfg = load_experiment_config(_write(tmp_path / "experiment.yaml", _experiment()))
    assert ecfg.name == "collapse.demo-1" and list(ecfg.arms) == ["syn.25"]


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["a document"]}), path)
    return path


def test_release_names_and_versions_follow_the_rule(tmp_path, shard):
    root = tmp_path / "releases"
    for name, version in (("../x", "v0001"), ("demo", "../v0001"), (".demo", "v1")):
        with pytest.raises(BadName):
            release.write_release(root, name, version, [shard], {})
    assert not root.exists()
    path = release.write_release(root, "demo.v2-web_toedit", "v0001", [shard], {})
    assert path == root / "demo.v2-web_toedit" / "v0001"


@pytest.mark.parametrize("args, key", [(["../no-such-folder/demo"], "NAME"), (["-x"], "NAME"),
                                       (["demo", "--version", "../v1"], "--version")])
def test_release_verify_refuses_a_name_outside_the_rule(tmp_path, capsys, args, key):
    # "-x" after "--": an argument, not an option
    argv = ["--data-root", str(tmp_path), "release", "verify", *(["--"] if args == ["-x"] else []),
            *args]
    assert cli(argv) == 2
    assert f"error: {key}: " in capsys.readouterr().err


def test_release_verify_takes_a_name_with_dots_and_dashes(tmp_path, shard, capsys):
    root = tmp_path / "data"
    wh = db.init(db.warehouse_path(root))
    released = release.release(root / "releases", "demo.v2-web_toedit", [shard], "m", {},
                               {"run_id": "r1", "corpus": "web_toedit"})
    records.record_release(wh, released.row)
    assert cli(["--data-root", str(root), "release", "verify", "demo.v2-web_toedit"]) == 0
    assert f"{released.path}: OK" in capsys.readouterr().out
