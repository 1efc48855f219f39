"""The collapse experiment: arms at exact token budgets and shares, held-out documents in no
arm, deterministic and cached training, and the flow end to end on a tiny config (the real
prior writes and scores the text, a real Prefect server, Dask, DuckDB)."""

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from semisynth.cli import main as cli
from semisynth.config import ExperimentConfig, LMConfig
from semisynth.tasks import experiment as exp
from semisynth.tasks import experiment_plan as plan
from semisynth.tasks import train as train_mod
from semisynth.tasks.vocabulary import remap, vocabulary
from semisynth.warehouse import db

TRAIN_TOKENS = 200
ARMS = {"human": {}, "syn50": {"synthetic_share": 0.5}, "syn100": {"synthetic_share": 1.0},
        "toedit": {"edit": {"threshold": 0.99}}, "dsir": {"select": "dsir"}}
MODEL = {"layers": 1, "hidden": 32, "heads": 2, "context": 32, "batch": 4}
EOS = 1


def toy_config(**arms) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "human": {"paths": ["h"]}, "synthetic": {"paths": ["s"]}, "heldout": {"paths": ["x"]},
        "train_tokens": 301, "seeds": [1], "arms": arms, "model": MODEL})


def toy_pool(name: str, token: int, lengths: list[int]) -> exp.Pool:
    """Documents made only of ``token``: a stream shows which pool each token came from."""
    return exp.Pool(name, [f"{name}/{i}" for i in range(len(lengths))],
                    [f"{name}-{i}" for i in range(len(lengths))],
                    [np.full(n, token, np.int64) for n in lengths])


def tokens_by_source(stream: np.ndarray) -> dict[int, int]:
    """Stream tokens per document token; a separator belongs to the document before it."""
    owner = stream.copy()
    for i in np.flatnonzero(stream == EOS):
        owner[i] = owner[i - 1]
    values, counts = np.unique(owner, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_mixture_shares_are_exact_in_tokens(share):
    ecfg = toy_config(arm={"synthetic_share": share})
    rng = np.random.default_rng(0)
    pools = {plan.HUMAN: toy_pool(plan.HUMAN, 5, rng.integers(5, 60, 30).tolist()),
             plan.SYNTHETIC: toy_pool(plan.SYNTHETIC, 7, rng.integers(5, 60, 30).tolist())}
    pieces = exp.arm_pieces(ecfg, "arm", pools, {})
    stream = exp.assemble(pieces, pools, EOS, ecfg.seed)
    assert len(stream) == 301
    synthetic = round(share * 301)
    assert tokens_by_source(stream) == {k: v for k, v in {5: 301 - synthetic, 7: synthetic}.items() if v}
    assert sum(p.cut for p in pieces) <= 2  # only the last document of each part is cut


def test_an_arm_needs_a_pool_that_holds_its_tokens():
    pools = {plan.HUMAN: toy_pool(plan.HUMAN, 5, [50] * 3),
             plan.SYNTHETIC: toy_pool(plan.SYNTHETIC, 7, [50] * 30)}
    with pytest.raises(ValueError, match="holds 153 tokens"):
        exp.arm_pieces(toy_config(human={}), "human", pools, {})


def test_heldout_documents_in_an_arm_are_refused():
    pools = {plan.HUMAN: toy_pool(plan.HUMAN, 5, [40] * 10)}
    pieces = {"human": exp.take_tokens(pools[plan.HUMAN], range(10), 200)}
    apart = toy_pool(plan.HELDOUT, 9, [40] * 2)
    exp.check_heldout(pieces, pools, [apart])
    overlapping = exp.Pool(plan.HELDOUT, ["h"], [pools[plan.HUMAN].hashes[0]], [np.ones(3)])
    with pytest.raises(ValueError, match="no arm trains on"):
        exp.check_heldout(pieces, pools, [overlapping])


@pytest.mark.parametrize("arm, error", [
    ({"synthetic_share": 0.5, "edit": {"threshold": 0.9}}, "synthetic_share must be 0"),
    ({"select": "dsir", "synthetic_share": 0.5}, "synthetic_share must be 1"),
    ({"synthetic_share": 1.5}, "less than or equal to 1"),
])
def test_arm_configs_that_make_no_sense_are_refused(arm, error):
    with pytest.raises(ValueError, match=error):
        toy_config(a=arm)


def test_an_arm_may_not_take_a_source_corpus_name():
    with pytest.raises(ValueError, match="taken"):
        toy_config(**{plan.HUMAN: {}})


def test_the_experiments_steps_build_its_pools_and_edited_arms_only():
    """The experiment's corpora through the pipeline's plan: the sources read once (the
    edited arms' sources take the human pool's shards, scored under their own settings),
    the held-out ones never scored, the mixture arms not built as corpora."""
    ecfg = toy_config(human={}, mixed={"synthetic_share": 0.5}, strict={"edit": {"threshold": 0.9}},
                      loose={"edit": {"threshold": 0.999}})
    pcfg = plan.pipeline_config(ecfg)
    steps = {s.corpus: s for s in plan.steps(ecfg, pcfg)}
    assert set(steps) == {plan.HUMAN, plan.SYNTHETIC, plan.HELDOUT, "strict", "loose",
                          plan.edit_source("strict"), plan.edit_source("loose")}
    assert not steps[plan.HELDOUT].scored
    assert all(steps[n].scored for n in steps if n != plan.HELDOUT)
    for arm in ("strict", "loose"):
        source = steps[plan.edit_source(arm)]
        assert source.same_files == plan.HUMAN and source.edit == ecfg.arm_edit(arm)
        assert steps[arm].make == "edit" and steps[arm].sources == (source.corpus,)
    order = list(steps)
    assert order.index(plan.HUMAN) < order.index(plan.edit_source("strict")) < order.index(plan.SYNTHETIC)


def test_remap_is_one_to_one_and_refuses_unknown_ids():
    vocab = vocabulary([np.array([7, 3, 3, 900]), np.array([42])])
    assert vocab.tolist() == [3, 7, 42, 900]
    assert remap(np.array([900, 3, 42]), vocab).tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match="outside"):
        remap(np.array([5]), vocab)


def test_schedule_warms_up_then_decays_to_the_floor():
    m = LMConfig(lr=1e-2, warmup=0.1, min_lr_ratio=0.1)
    lrs = [train_mod.learning_rate(s, 100, m) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-2) and lrs[0] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-3) and all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


# The flow end to end on a tiny config: seconds per arm.

@pytest.fixture(scope="module")
def tiny(prefect_server, tmp_path_factory, prior_folder, brown_shards):
    home = tmp_path_factory.mktemp("experiment")
    config = {
        "name": "tiny-collapse", "data_root": str(home), "seed": 3, "shard_docs": 4,
        "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": 32},
        "edit": {"beta": 8.0},  # flat redraws: a few hundred tokens see some edits
        "human": {"paths": [str(brown_shards[0])], "limit_docs": 8},
        "synthetic": {"paths": ["assets/synthetic/pool-*.jsonl.gz"], "generate": [
            {"out": "assets/synthetic/pool-0.jsonl.gz", "seeded_by": [str(brown_shards[1])],
             "documents": 12, "max_new_tokens": 24}]},
        "heldout": {"paths": [str(brown_shards[9])], "limit_docs": 4},
        "heldout_synthetic": {"paths": ["assets/synthetic/heldout.jsonl.gz"], "generate": [
            {"out": "assets/synthetic/heldout.jsonl.gz", "seeded_by": [str(brown_shards[8])],
             "documents": 3, "max_new_tokens": 24}]},
        "train_tokens": TRAIN_TOKENS, "seeds": [1, 2], "arms": ARMS, "model": MODEL,
        "metrics": {"bootstrap": 20},
    }
    path = home / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    from semisynth.flows.experiment import run

    result = run(str(path))
    assert result["state"] == "COMPLETED", result
    return home, path, result


def results(home: Path, run_id: str):
    return db.query(db.warehouse_path(home), "SELECT * FROM experiment_results WHERE run_id = ? "
                    "ORDER BY arm, seed, eval_corpus", [run_id])


def test_every_arm_trains_on_exactly_train_tokens(tiny):
    home, _, result = tiny
    assert set(result["streams"]) == set(ARMS)
    for stream in result["streams"].values():
        assert len(np.load(stream)) == TRAIN_TOKENS
    wh = db.warehouse_path(home)
    arms = db.query(wh, "SELECT arm, source, sum(tokens) AS tokens FROM experiment_arms "
                        "WHERE run_id = ? GROUP BY ALL", [result["run_id"]])
    assert arms.groupby("arm").tokens.sum().to_dict() == dict.fromkeys(ARMS, TRAIN_TOKENS)
    by = {(r.arm, r.source): r.tokens for r in arms.itertuples()}
    assert by[("syn50", plan.SYNTHETIC)] == by[("syn50", plan.HUMAN)] == TRAIN_TOKENS // 2
    assert by[("syn100", plan.SYNTHETIC)] == by[("dsir", plan.SYNTHETIC)] == TRAIN_TOKENS
    assert by[("human", plan.HUMAN)] == by[("toedit", "toedit")] == TRAIN_TOKENS
    rows = results(home, result["run_id"])
    assert len(rows) == len(ARMS) * 2 * 2  # arms x seeds x held-out corpora
    assert set(rows.train_tokens) == {TRAIN_TOKENS}
    assert len(set(rows.steps)) == 1  # one schedule for every arm


def test_heldout_documents_are_in_no_arm(tiny):
    home, _, result = tiny
    hashes = {k: set(v) for k, v in result["doc_hashes"].items()}
    for held in (plan.HELDOUT, plan.HELDOUT_SYNTHETIC):
        assert hashes[held]
        for arm in ARMS:
            assert hashes[arm] and not hashes[held] & hashes[arm], (held, arm)
    # and by text, in the arms' corpora as the warehouse records them
    wh = db.warehouse_path(home)
    arm_docs = db.query(wh, "SELECT DISTINCT doc_hash FROM doc_scores WHERE run_id = ? AND "
                            "corpus IN (SELECT arm FROM experiment_arms WHERE run_id = ?)",
                        [result["run_id"], result["run_id"]])
    assert not set(arm_docs.doc_hash) & (hashes[plan.HELDOUT] | hashes[plan.HELDOUT_SYNTHETIC])


def test_the_same_seed_gives_the_same_ppl(tiny, tmp_path):
    home, _, result = tiny
    evals = {plan.HELDOUT: Path(result["evals"][plan.HELDOUT])}
    stream, vocab, m = Path(result["streams"]["human"]), Path(result["vocab"]), LMConfig(**MODEL)
    first = train_mod.train_and_evaluate(stream, vocab, evals, m, 1, tmp_path / "a")
    again = train_mod.train_and_evaluate(stream, vocab, evals, m, 1, tmp_path / "b")
    other = train_mod.train_and_evaluate(stream, vocab, evals, m, 2, tmp_path / "c")
    assert not first["cached"] and not again["cached"]
    assert again["losses"] == first["losses"]
    assert again["evals"] == first["evals"]
    assert other["evals"][plan.HELDOUT]["ppl"] != first["evals"][plan.HELDOUT]["ppl"]
    # the flow's Dask worker trained the same (arm, seed) to the same perplexity
    rows = results(home, result["run_id"])
    flow_ppl = rows[(rows.arm == "human") & (rows.seed == 1) & (rows.eval_corpus == plan.HELDOUT)]
    assert flow_ppl.eval_ppl.iloc[0] == first["evals"][plan.HELDOUT]["ppl"]


def test_summary_view_gives_the_mean_and_a_t_interval_over_seeds(tiny):
    home, _, result = tiny
    wh = db.warehouse_path(home)
    summary = db.query(wh, "SELECT * FROM experiment_summary WHERE experiment = 'tiny-collapse'")
    assert set(summary.arm) == set(ARMS) and set(summary.seeds) == {2}
    rows = results(home, result["run_id"])
    for r in summary.itertuples():
        ppl = rows[(rows.arm == r.arm) & (rows.eval_corpus == r.eval_corpus)].eval_ppl.to_numpy()
        low, high = stats.t.interval(0.95, len(ppl) - 1, loc=ppl.mean(), scale=stats.sem(ppl))
        assert r.mean_ppl == pytest.approx(ppl.mean())
        assert (r.ci_low, r.ci_high) == (pytest.approx(low, rel=1e-3), pytest.approx(high, rel=1e-3))
    shares = summary.set_index("arm").synthetic_share.to_dict()
    assert shares == {"human": 0.0, "syn50": 0.5, "syn100": 1.0, "toedit": 0.0, "dsir": 1.0}


def test_each_arms_gate_metrics_sit_beside_its_ppl_in_one_query(tiny):
    home, _, result = tiny
    joined = db.query(db.warehouse_path(home), """
        SELECT s.arm, s.mean_ppl, m.metric, m.value FROM experiment_summary s
        JOIN metrics m ON m.run_id = s.run_id AND m.corpus = s.arm AND m.comparison = 'vs_reference'
        WHERE s.eval_corpus = 'heldout-human' AND m.reference = 'human-pool'""")
    for arm in ARMS:
        metrics = set(joined[joined.arm == arm].metric)
        assert {"ppl_low_frac", "distinct_2", "ref_coverage_2", "js_2"} <= metrics, arm
    assert "edit_rate" in set(joined[joined.arm == "toedit"].metric)


def test_a_cached_arm_and_seed_is_not_trained_again(tiny, capsys):
    home, path, first = tiny
    results_dir = exp.experiment_folder(home) / "results"
    files = {p: p.stat().st_mtime_ns for p in results_dir.glob("*.json")}
    assert len(files) == len(ARMS) * 2 and first["trained"] == len(ARMS) * 2
    assert cli(["experiment", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 models trained now, 10 read from the cache" in out
    assert {p: p.stat().st_mtime_ns for p in results_dir.glob("*.json")} == files
    wh = db.warehouse_path(home)
    second = db.query(wh, "SELECT run_id FROM runs WHERE config_name = 'tiny-collapse' "
                          "ORDER BY started_at DESC LIMIT 1").run_id.iloc[0]
    before, after = results(home, first["run_id"]), results(home, second)
    assert after.cached.all() and not before.cached.any()
    assert after.eval_ppl.tolist() == before.eval_ppl.tolist()


def test_flow_run_tasks_and_artifacts_are_in_prefect(tiny):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    _, _, result = tiny

    async def look():
        async with get_client() as client:
            fr = await client.read_flow_run(result["flow_run_id"])
            tasks = [t for t in await client.read_task_runs() if t.flow_run_id == fr.id]
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id])))
            return fr, tasks, arts

    fr, tasks, arts = asyncio.run(look())
    assert fr.state.type.value == "COMPLETED"
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"fetch-assets", "generate", "ingest", "score-edit", "derive", "build-arms",
            "arm-metrics", "train", "record-results", "experiment-report"} <= names
    trains = [t for t in tasks if t.name.startswith("train-")]
    assert len(trains) == len(ARMS) * 2 and all("gpu" in t.tags for t in trains)
    by_key = {a.key: a for a in arts}
    assert "held-out" in by_key["semisynth-experiment-summary"].data
    assert "data:image/png;base64," in by_key["semisynth-experiment-ppl"].data
    assert "semisynth-ppl-human-pool" in by_key


def test_report_has_the_experiment_section(tiny, capsys):
    home, _, result = tiny
    assert cli(["--data-root", str(home), "report", result["run_id"]]) == 0
    page = Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text()
    assert "<h2>Collapse experiment</h2>" in page
    for arm in ARMS:
        assert f'<td class="l">{arm}</td>' in page
    assert 'alt="experiment-ppl"' in page
    assert math.isfinite(float(result["rows"][0]["mean_ppl"]))
