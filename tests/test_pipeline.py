"""tasks/pipeline.py: the plan every runner walks, and the run start they share."""

from pathlib import Path

import pytest

from semisynth.config import config_from_tree
from semisynth.errors import InputError
from semisynth.tasks import pipeline
from semisynth.warehouse import db

CORPORA = {
    "mix": {"mix": {"edited": 0.5, "other": 0.5}, "reference": "human"},
    "edited": {"edited_from": "human", "reference": "human"},
    "other": {"role": "monitored", "paths": ["other.jsonl"], "reference": "human"},
    "human": {"role": "reference", "paths": ["human.jsonl"]},
    "twice": {"edited_from": "edited", "reference": "human"},
}


def config(tmp_path: Path):
    return config_from_tree({"data_root": str(tmp_path), "corpora": CORPORA,
                             "prior": {"model": str(tmp_path)}})


def test_the_plan_ingests_first_then_derives_in_dependency_order(tmp_path):
    steps = pipeline.plan(config(tmp_path))
    assert [(s.corpus, s.make) for s in steps[:2]] == [("human", "ingest"), ("other", "ingest")]
    derived = [s.corpus for s in steps[2:]]
    assert sorted(derived) == ["edited", "mix", "twice"]
    assert derived.index("edited") < derived.index("mix")
    assert derived.index("edited") < derived.index("twice")
    assert {s.corpus: s.scored for s in steps} == {
        "human": True, "other": True, "edited": True, "twice": True, "mix": False}


def test_a_plan_for_some_corpora_takes_what_they_are_made_from_with_their_settings(tmp_path):
    cfg = config(tmp_path)
    own = cfg.edit.model_copy()  # the settings object itself rides along
    steps = pipeline.plan(cfg, corpora=["twice"], edits={"human": own})
    assert [(s.corpus, s.sources) for s in steps] == [
        ("human", ()), ("edited", ("human",)), ("twice", ("edited",))]
    assert steps[0].edit is own and steps[1].edit is None
    steps = pipeline.plan(cfg, corpora=["other", "edited"], unscored=["other"])
    assert {s.corpus: s.scored for s in steps} == {"human": True, "other": False, "edited": True}
    assert next(s for s in pipeline.plan(cfg) if s.corpus == "mix").sources == ("edited", "other")


def test_a_plan_refuses_what_it_cannot_build(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(ValueError, match="does not build"):
        pipeline.plan(cfg, corpora=["edited"], edits={"other": cfg.edit})
    with pytest.raises(ValueError, match="not scored"):
        pipeline.plan(cfg, unscored=["human"])  # edited is made from its scores
    with pytest.raises(ValueError, match="ingested before"):
        pipeline.plan(cfg, same_files={"human": "other"})  # other comes after human
    with pytest.raises(ValueError, match="ingested before"):
        pipeline.plan(cfg, same_files={"edited": "human"})  # edited is not read from files


class RecordingRunner:
    """A runner that makes nothing: it records the calls build_corpora makes."""

    def __init__(self):
        self.calls, self.submitted = [], {}

    def ingest(self, corpus):
        self.calls.append(("ingest", corpus))
        return [Path(f"{corpus}.parquet")], {"rows_in": 1}

    def derive(self, corpus, shards, scores):
        self.calls.append(("derive", corpus))
        c = CORPORA[corpus]
        sources = [c["edited_from"]] if "edited_from" in c else list(c["mix"])
        assert all(n in scores for n in sources), "a source is derived from before its scores"
        carried = [Path(f"{corpus}-carried")] if corpus == "mix" else None
        return [Path(f"{corpus}.parquet")], carried

    def submit(self, corpus, shards, edit):
        self.calls.append(("submit", corpus))
        self.submitted[corpus] = (shards, edit)
        return corpus

    def collect(self, handle):
        self.calls.append(("collect", handle))
        return [Path(f"{handle}-scores")], 10


def test_build_corpora_scores_every_corpus_but_a_mixture_once(tmp_path):
    runner = RecordingRunner()
    built = pipeline.build_corpora(pipeline.plan(config(tmp_path)), runner)
    # each ingested corpus's scoring starts before the next corpus is read
    assert runner.calls[:4] == [("ingest", "human"), ("submit", "human"),
                                ("ingest", "other"), ("submit", "other")]
    submitted = [c[1] for c in runner.calls if c[0] == "submit"]
    assert sorted(submitted) == ["edited", "human", "other", "twice"]
    assert sorted(c[1] for c in runner.calls if c[0] == "collect") == sorted(submitted)
    assert built.scores["mix"] == [Path("mix-carried")]
    assert set(built.shards) == set(CORPORA) and set(built.ingest_counts) == {"human", "other"}
    assert built.model_work_tokens == 40


def test_a_corpus_sharing_files_takes_their_shards_and_its_own_settings(tmp_path):
    cfg = config_from_tree({"data_root": str(tmp_path), "prior": {"model": str(tmp_path)},
                            "corpora": {**CORPORA, "again": {"role": "monitored",
                                                             "paths": ["human.jsonl"],
                                                             "reference": "human"}}})
    own = cfg.edit.model_copy()
    runner = RecordingRunner()
    built = pipeline.build_corpora(
        pipeline.plan(cfg, corpora=["again", "human"], edits={"again": own},
                      same_files={"again": "human"}), runner)
    assert [c for c in runner.calls if c[0] == "ingest"] == [("ingest", "human")]
    assert built.shards["again"] == built.shards["human"]
    assert runner.submitted["again"] == (built.shards["human"], own)
    assert runner.submitted["human"][1] is None and set(built.ingest_counts) == {"human"}


def test_a_started_run_is_recorded_running_then_with_its_end(tmp_path):
    cfg = config(tmp_path).model_copy(update={"lock_wait_s": 0})
    run_id = pipeline.new_run_id("test")
    with pipeline.started_run(cfg, run_id, "the test", config_name="t", config_json="{}") as run:
        assert run.model_id == str(tmp_path)
        assert pipeline.score_dir(cfg, run.model_id).parent == tmp_path / "scores"
        status = db.query(run.warehouse, "SELECT status FROM runs WHERE run_id = ?", [run_id])
        assert status.status.tolist() == ["RUNNING"]
        run.handle.finish("FAILED", "blocked")
    with pytest.raises(InputError):
        with pipeline.started_run(cfg, "refused", "the test", config_name="t", config_json="{}"):
            raise InputError("bad input")
    rows = db.query(run.warehouse, "SELECT run_id, status FROM runs ORDER BY started_at")
    assert rows.values.tolist() == [[run_id, "FAILED"], ["refused", "REFUSED"]]
