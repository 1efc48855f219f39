"""The collapse experiment: small causal LMs trained from scratch on each arm's corpus.

fetch -> generate (the prior's synthetic text, cached) -> ingest -> score+edit (cached) ->
derive (the edited arms' text) -> build arms (streams of exactly train_tokens, DSIR) ->
records and gate metrics of each arm's corpus -> train x seeds (accelerator tasks) ->
experiment_results -> picture and summary.

The run starts as every run does (``tasks/pipeline.started_run``). The pools and the edited
arms are built as every corpus is (``tasks/pipeline.build_corpora``), over the experiment's
steps (``tasks.experiment_plan.steps``) by ``ExperimentRunner``: the nightly flow's
``FlowRunner`` and tasks, with their caches, ingesting a generated source once the prior
has written it (its ``generate`` tasks are submitted first; the human pool is scored
meanwhile). The other tasks are a few lines over the plain functions of
``tasks.experiment_plan``, ``tasks.experiment_generation`` and ``tasks.experiment`` (the
arms' streams), ``tasks.train``, ``quality`` and ``warehouse.records``. Only this process
writes the warehouse.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed

from semisynth.config import Config, ExperimentConfig, load_experiment_config
from semisynth.errors import REFUSALS
from semisynth.flows import lifecycle
from semisynth.flows.nightly import FlowRunner, record_corpora_task
from semisynth.flows.runner import GPU_TAG, flow_dask_client, score_placement, task_runner
from semisynth.progress import logged
from semisynth.quality import experiment_stats
from semisynth.quality import measure as measure_mod
from semisynth.quality import plots as plots_mod
from semisynth.tasks import corpora as corpora_mod
from semisynth.tasks import experiment as exp
from semisynth.tasks import experiment_generation as exp_gen
from semisynth.tasks import experiment_plan as plan
from semisynth.tasks import pipeline
from semisynth.tasks import train as train_mod
from semisynth.tasks.assets import fetch_brown
from semisynth.tasks.prior import locate_model, pin_precision
from semisynth.warehouse import db, records, report_data


@task(name="fetch-assets", cache_policy=NO_CACHE)
def fetch_task(ecfg: ExperimentConfig, root: Path) -> None:
    if ecfg.embedded_default:
        get_run_logger().info("Brown Corpus under %s", fetch_brown(root)[0].parent)


@task(name="generate", cache_policy=NO_CACHE, retries=1, tags=[GPU_TAG])
def generate_task(pcfg: Config, gen, seed: int) -> str:
    """The prior writes one synthetic source file (accelerator work, as score+edit)."""
    with logged(f"{gen.out} generated", get_run_logger().info, total=gen.documents,
                unit="documents", also="tokens",
                also_total=gen.documents * gen.max_new_tokens) as bar:
        return str(exp_gen.generate_source(pcfg, gen, seed, bar))


@task(name="build-arms", cache_policy=NO_CACHE)
def build_task(ecfg: ExperimentConfig, pcfg: Config, run_id: str, shards: dict, scores: dict,
               score_dir: Path) -> exp.ExperimentData:
    tokenizer = exp_gen.prior_tokenizer(pcfg)
    data = exp.build_experiment(ecfg, pcfg, shards, scores, tokenizer, score_dir)
    wh = db.warehouse_path(pcfg.root)
    logger = get_run_logger()
    for arm, a in data.arms.items():
        records.record_new_shards(wh, run_id, arm, corpora_mod.shard_infos(a.shards, "arm"))
        logger.info("arm %s: %s", arm, ", ".join(
            f"{r['source']} {r['tokens']} tokens in {r['documents']} documents" for r in a.sources()))
    logger.info("vocabulary: %d token types of the prior's %d; pools: %s", data.vocab_size,
                len(tokenizer), ", ".join(f"{n} {t} tokens" for n, t in data.pool_tokens.items()))
    if any(a.select for a in ecfg.arms.values()) and \
            data.pool_tokens[plan.SYNTHETIC] < 2 * ecfg.train_tokens:
        logger.warning("the synthetic pool holds less than twice train_tokens: DSIR has little "
                       "room to choose (generate more documents)")
    return data


@task(name="arm-metrics", cache_policy=NO_CACHE)
def metrics_task(pcfg: Config, run_id: str, scores: dict, pairs: dict) -> measure_mod.MeasuredRun:
    """Each arm's corpus against the human pool: the gate's metric rows, with the plots."""
    measured = measure_mod.measure_run(pcfg, db.warehouse_path(pcfg.root), run_id, scores, pairs,
                                       client=flow_dask_client())
    get_run_logger().info("gate metrics of %d arms on equal budgets of %d tokens", len(pairs),
                          measured.budget)
    for png in measured.plots:
        create_markdown_artifact(plots_mod.image_markdown(png), key=plots_mod.artifact_key(png),
                                 description=f"semisynth run {run_id}: {png.name}")
    return measured


@task(name="train", cache_policy=NO_CACHE, retries=1, tags=[GPU_TAG])
def train_task(arm: str, seed: int, stream: Path, vocab: Path, evals: dict, model,
               results_dir: Path) -> dict:
    """One (arm, seed): train, evaluate; a finished one is read back, not trained again."""
    logger = get_run_logger()
    with logged(f"{arm} seed {seed} trained", logger.info, unit="steps") as bar:
        result = train_mod.train_and_evaluate(stream, vocab, evals, model, seed, results_dir, bar)
    logger.info("%s seed %d: %s%s", arm, seed, ", ".join(
        f"{c} PPL {e['ppl']:.4g}" for c, e in result["evals"].items()),
        " (cached result, not trained again)" if result["cached"] else
        f" ({result['train_seconds']:.0f} s on {result['device']})")
    return {**result, "arm": arm}


@task(name="record-results", cache_policy=NO_CACHE)
def record_results_task(ecfg: ExperimentConfig, pcfg: Config, run_id: str,
                        data: exp.ExperimentData, results: list[dict]) -> int:
    rows = [row for r in results for row in plan.result_rows(ecfg, run_id, r["arm"], r)]
    return records.record_experiment(db.warehouse_path(pcfg.root), rows,
                                     exp.arm_rows(ecfg, run_id, data))


@task(name="experiment-report", cache_policy=NO_CACHE)
def report_task(ecfg: ExperimentConfig, pcfg: Config, run_id: str) -> str:
    """The picture and the summary, attached to the flow run."""
    wh = db.warehouse_path(pcfg.root)
    png = plots_mod.experiment_png(plots_mod.run_folder(pcfg.root, run_id) / plots_mod.EXPERIMENT_PNG,
                                   report_data.experiment_summary(wh, run_id),
                                   title=f"{ecfg.name}: held-out PPL against the synthetic share")
    create_markdown_artifact(plots_mod.image_markdown(png), key=plots_mod.artifact_key(png),
                             description=f"semisynth experiment {ecfg.name}, run {run_id}")
    markdown = experiment_stats.experiment_markdown(wh, run_id, ecfg.name, ecfg.train_tokens)
    create_markdown_artifact(markdown, key="semisynth-experiment-summary",
                             description=f"semisynth experiment {ecfg.name}, run {run_id}")
    return markdown


@flow(name="collapse_experiment", log_prints=True, task_runner=task_runner())
def collapse_experiment(config_path: str, overrides: list[str] | None = None):
    """Build every arm's corpus at one token budget, measure it against the human pool,
    train a small LM on it per seed, and evaluate each on held-out human (and synthetic)
    documents. A run stopped by its input ends Refused (``lifecycle.refused``)."""
    try:
        ecfg = load_experiment_config(config_path, overrides)
        return _experiment(ecfg, pin_precision(plan.pipeline_config(ecfg)))
    except REFUSALS as exc:
        return lifecycle.refused(exc)


class ExperimentRunner(FlowRunner):
    """The flows' runner over the experiment's sources: a source the prior writes is
    ingested once its ``generate`` tasks are done (a failed one fails the run there)."""

    def __init__(self, pcfg: Config, run_id: str, model_id: str,
                 generating: list[tuple[str, PrefectFuture]]) -> None:
        super().__init__(pcfg, run_id, model_id)
        self.generating = generating

    def ingest(self, corpus: str) -> tuple[list[Path], dict]:
        for source, job in self.generating:
            if source == corpus:
                job.result()
        return super().ingest(corpus)


def _experiment(ecfg: ExperimentConfig, pcfg: Config):
    name = flow_run.get_name()
    run_id = pipeline.new_run_id(name=name)
    with pipeline.started_run(pcfg, run_id, f"flow run {name or 'local'}", config_name=ecfg.name,
                              config_json=ecfg.model_dump_json(),
                              flow_run_id=str(flow_run.get_id() or "")) as run:
        get_run_logger().info(
            "run %s: experiment %s, %d arms x %d seeds at %d tokens, warehouse %s", run_id,
            ecfg.name, len(ecfg.arms), len(ecfg.seeds), ecfg.train_tokens, run.warehouse)
        edited = plan.edited_arms(ecfg)
        fetch_task(ecfg, pcfg.root)
        with score_placement():
            generating = [(source, generate_task.submit(pcfg, g, ecfg.seed))
                          for source, g in plan.generation_jobs(ecfg, pcfg)]
        runner = ExperimentRunner(pcfg, run_id, run.model_id, generating)
        built = pipeline.build_corpora(plan.steps(ecfg, pcfg), runner)
        shards, scores, counts = built.shards, built.scores, built.ingest_counts
        data = build_task(ecfg, pcfg, run_id, shards, scores, runner.score_dir)
        arm_shards = {arm: a.shards for arm, a in data.arms.items()}
        arm_scores = {arm: a.scores for arm, a in data.arms.items()}
        pools = (plan.HUMAN, plan.SYNTHETIC)
        record_corpora_task(pcfg, run_id, {**{n: shards[n] for n in pools}, **arm_shards},
                            {**{n: scores[n] for n in pools}, **arm_scores}, counts)
        measured = metrics_task(
            pcfg, run_id, {plan.HUMAN: scores[plan.HUMAN], **arm_scores,
                           **{plan.edit_source(a): scores[plan.edit_source(a)] for a in edited}},
            {arm: plan.HUMAN for arm in ecfg.arms})
        evals = {name: path for name, (path, _, _) in data.evals.items()}
        results_dir = exp.experiment_folder(pcfg.root) / "results"
        with score_placement():  # accelerator work: GPU workers only, when there are any
            futures = [train_task.submit(arm, seed, a.stream, data.vocab, evals, ecfg.model,
                                         results_dir)
                       for seed in ecfg.seeds for arm, a in data.arms.items()]
        results = [f.result() for f in futures]
        record_results_task(ecfg, pcfg, run_id, data, results)
        markdown = report_task(ecfg, pcfg, run_id)
        trained = sum(not r["cached"] for r in results)
        message = (f"{len(results)} models ({trained} trained now, {len(results) - trained} "
                   "read from the cache)")
        run.handle.finish("COMPLETED", message)
    summary = report_data.experiment_summary(run.warehouse, run_id)
    result = {"run_id": run_id, "warehouse": str(run.warehouse), "summary": markdown,
              "rows": summary.to_dict("records"), "trained": trained,
              "cached": len(results) - trained, "shape": experiment_stats.collapse_shape(summary),
              "vocab_size": data.vocab_size, "metrics_budget": measured.budget,
              "streams": {arm: str(a.stream) for arm, a in data.arms.items()},
              "evals": {name: str(path) for name, path in evals.items()},
              "vocab": str(data.vocab),
              "doc_hashes": {k: sorted(v) for k, v in data.doc_hashes.items()}}
    return Completed(message=message, data=result)


def flow_for(ecfg: ExperimentConfig):
    """collapse_experiment with the task runner sized by ``ecfg`` (``dask_workers``)."""
    return collapse_experiment.with_options(task_runner=task_runner(plan.pipeline_config(ecfg)))


def run(config_path: str, overrides: list[str] | None = None) -> dict:
    """Run the flow with the configured task runner (``lifecycle.run_owned``: the data
    root's lock, a Prefect server of its own); returns the result dict."""
    ecfg = load_experiment_config(config_path, overrides)
    pcfg = plan.pipeline_config(ecfg)
    if pcfg.prior.model != "default":  # refused before a Prefect server and Dask start
        locate_model(pcfg.prior.model)
    return lifecycle.run_owned(flow_for(ecfg), pcfg.root, pcfg.lock_wait_s,
                               f"semisynth experiment {config_path}", str(config_path), overrides)


os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
