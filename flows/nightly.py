"""The nightly corpus refresh: ingest -> score+edit -> metrics -> gate -> release.

The corpora are built as ``tasks/pipeline.py`` describes, by ``FlowRunner``: each step a
Prefect task, the scoring on Dask. Each task is a few lines over a plain function of its
stage (``semisynth.tasks``, ``semisynth.quality``, ``semisynth.warehouse``); this module
only wires them. Only this (the flow) process writes the DuckDB warehouse, holding the
data root's lock from start to end; Dask workers write Parquet.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from semisynth.config import Config, EditConfig, load_config
from semisynth.errors import REFUSALS
from semisynth.flows import lifecycle
from semisynth.flows.runner import GPU_TAG, flow_dask_client, score_placement, task_runner
from semisynth.progress import logged
from semisynth.quality import gate as gate_mod
from semisynth.quality import measure as measure_mod
from semisynth.quality import plots as plots_mod
from semisynth.quality.report import summary_markdown
from semisynth.tasks import corpora as corpora_mod
from semisynth.tasks import ingest as ingest_mod
from semisynth.tasks import pipeline
from semisynth.tasks import release as release_mod
from semisynth.tasks.prior import locate_model, pin_precision
from semisynth.tasks.score import score_shard
from semisynth.warehouse import db, records, report_data

QUARANTINE_SHOWN = 10  # quarantined rows a run's result carries (all are in the warehouse)


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: Config, corpus: str, run_id: str) -> tuple[list[Path], dict]:
    result = ingest_mod.ingest_corpus(cfg, corpus)
    seen = records.record_ingest(db.warehouse_path(cfg.root), run_id, result)
    get_run_logger().info(
        "ingest %s: %d rows in, %d ok, %d quarantined, %d shards (%d new)", corpus,
        result.rows_in, result.rows_ok, result.rows_quarantined, len(result.shards),
        sum(s.shard_hash not in seen for s in result.shards))
    if result.json_fields:
        get_run_logger().warning("ingest %s: %s", corpus, ingest_mod.json_fields_message(result))
    return [Path(s.path) for s in result.shards], ingest_mod.ingest_columns(result)


@task(name="score-edit", cache_policy=NO_CACHE, retries=1, tags=[GPU_TAG])
def score_task(cfg: Config, shard: Path, out: Path, edit: EditConfig | None = None) -> dict:
    """The accelerator stage: one shard through the prior, cached by shard and params.

    Tagged ``gpu`` (a Prefect tag concurrency limit caps how many run at once); on a Dask
    cluster with GPU workers it runs only there (see ``runner.score_placement``). A retry,
    or Dask rerunning it after its worker died, reuses the shard's score file if the lost
    attempt had finished it."""
    logger = get_run_logger()
    # a line every 30 s (a long document's windows move it too) and one at the end
    with logged(f"shard {shard.stem} scored", logger.info, unit="documents", also="tokens") as bar:
        stats = score_shard(shard, out, cfg.root, cfg.prior, edit or cfg.edit, cfg.seed,
                            progress=bar)
    if not stats.model_work:
        logger.info("shard %s: cached scores reused, no model work", shard.stem)
    elif stats.compile_seconds:
        logger.info("shard %s: %.1f s of its %.1f s compiled the prior (new batch shapes)",
                    shard.stem, stats.compile_seconds, stats.seconds)
    return asdict(stats)


@task(name="derive", cache_policy=NO_CACHE)
def derive_task(cfg: Config, corpus: str, run_id: str, shards: dict, scores: dict,
                score_dir: Path) -> tuple[list[Path], list[Path] | None]:
    made, made_scores = corpora_mod.derive(cfg, corpus, shards, scores, score_dir)
    records.record_new_shards(db.warehouse_path(cfg.root), run_id, corpus,
                              corpora_mod.derived_shard_infos(cfg, corpus, made))
    return made, made_scores


@task(name="record-corpora", cache_policy=NO_CACHE)
def record_corpora_task(cfg: Config, run_id: str, shards: dict, scores: dict,
                        ingest_counts: dict) -> None:
    records.record_corpora(db.warehouse_path(cfg.root), run_id,
                           corpora_mod.corpus_records(cfg, shards, scores, ingest_counts))


@task(name="metrics", cache_policy=NO_CACHE)
def metrics_task(cfg: Config, run_id: str, scores: dict[str, list[Path]]
                 ) -> measure_mod.MeasuredRun:
    """Every metric on one equal token budget, stored, with the run's plots."""
    measured = measure_mod.measure_run(cfg, db.warehouse_path(cfg.root), run_id, scores,
                                       cfg.pairs(), client=flow_dask_client())
    get_run_logger().info("metrics on equal budgets of %d tokens", measured.budget)
    for png in measured.plots:  # attached to the flow run
        create_markdown_artifact(plots_mod.image_markdown(png), key=plots_mod.artifact_key(png),
                                 description=f"semisynth run {run_id}: {png.name}")
    return measured


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(cfg: Config, run_id: str, corpus: str) -> dict:
    c = cfg.corpora[corpus]
    wh = db.warehouse_path(cfg.root)
    result = gate_mod.validate_corpus(wh, cfg.root / "gx", run_id, corpus, c.reference,
                                      cfg.gate, edited=c.edited_from is not None,
                                      synthetic_share=c.synthetic_reference is not None)
    records.record_validations(wh, result.rows)
    logger = get_run_logger()
    if result.success:
        logger.info("gate %s on %s: PASSED (%d expectations)", cfg.gate.suite, corpus, len(result.rows))
    else:
        logger.warning("gate %s on %s: FAILED\n%s", cfg.gate.suite, corpus, result.summary())
    return {"success": result.success, "failures": result.failures(), "rows": result.rows}


@task(name="release", cache_policy=NO_CACHE)
def release_task(cfg: Config, run_id: str, corpus: str, shards: list[Path], model_id: str,
                 metric_values: dict, validation: dict, scores: dict[str, list[Path]]) -> str:
    released = release_mod.release_corpus(cfg, run_id, corpus, shards, model_id,
                                          metric_values, validation, scores)
    if released.row is None:
        get_run_logger().info("release %s: content unchanged since %s, no new version",
                              corpus, released.path)
    else:
        records.record_release(db.warehouse_path(cfg.root), released.row)
    return str(released.path)


@task(name="recover", cache_policy=NO_CACHE)
def recover_task(cfg: Config, closed: dict[str, str | None]) -> None:
    """What killed runs left behind: the runs this run found dead (marked CRASHED in the
    warehouse as it started) marked Crashed in Prefect too, and releases renamed into place
    without their warehouse row recorded from their manifests, those whose intent a killed
    run recorded (``release_mod.restore_rows``; any other such folder is named in a warning
    and left alone)."""
    logger = get_run_logger()
    if closed:
        logger.warning("runs whose process died while RUNNING, now CRASHED: %s", ", ".join(closed))
        try:
            lifecycle.mark_crashed(closed.values(), records.DEAD_RUN_MESSAGE)
        except Exception as exc:  # bookkeeping of old runs: never a reason to fail this one
            logger.warning("could not mark their Prefect flow runs Crashed: %r", exc)
    for row in release_mod.restore_rows(cfg.root / "releases", db.warehouse_path(cfg.root),
                                        warn=logger.warning):
        logger.warning("release %s %s had no warehouse row (its run was killed after writing "
                       "it): recorded from its manifest", row["name"], row["version"])


# The task runner is declared here too (not only in ``run``): a Prefect worker that loads
# the flow from its entrypoint (deployments/prefect.yaml) must score on Dask as well.
@flow(name="nightly_refresh", log_prints=True, task_runner=task_runner())
def nightly_refresh(config_path: str, overrides: list[str] | None = None):
    """Ingest every source, score and edit with the prior, measure each corpus against
    its human reference, gate the release candidates, release those that pass. A run
    stopped by its input ends Refused (``lifecycle.refused``)."""
    try:
        return _refresh(config_path, overrides)
    except REFUSALS as exc:
        return lifecycle.refused(exc)


class FlowRunner:
    """``pipeline.Runner`` of the flows: each step a Prefect task; a corpus's scoring
    submitted at once for every shard (to the GPU workers when the cluster has them), then
    collected. A score file already submitted in this run (the same shard under the same
    settings, for another corpus) is not submitted again."""

    def __init__(self, cfg: Config, run_id: str, model_id: str) -> None:
        self.cfg, self.run_id, self.model_id = cfg, run_id, model_id
        self.score_dir = pipeline.score_dir(cfg, model_id)
        self._scoring: dict[Path, PrefectFuture] = {}
        self._counted: set[Path] = set()

    def ingest(self, corpus: str) -> tuple[list[Path], dict]:
        return ingest_task(self.cfg, corpus, self.run_id)

    def derive(self, corpus: str, shards: dict, scores: dict) -> tuple[list[Path], list[Path] | None]:
        return derive_task(self.cfg, corpus, self.run_id, shards, scores, self.score_dir)

    def submit(self, corpus: str, shards: list[Path], edit: EditConfig | None) -> list[Path]:
        out_dir = pipeline.score_dir(self.cfg, self.model_id, edit)
        with score_placement():  # GPU workers only, when the cluster has them
            for shard in shards:
                if out_dir / shard.name not in self._scoring:
                    self._scoring[out_dir / shard.name] = score_task.submit(
                        self.cfg, shard, out_dir / shard.name, edit)
        return [out_dir / shard.name for shard in shards]

    def collect(self, handle: list[Path]) -> tuple[list[Path], int]:
        work = 0
        for out in handle:
            stats = self._scoring[out].result()
            if out not in self._counted:  # a score file two corpora share is one work
                self._counted.add(out)
                work += stats["scored_tokens"] if stats["model_work"] else 0
        return handle, work


def _refresh(config_path: str, overrides: list[str] | None):
    cfg = pin_precision(load_config(config_path, overrides))
    name = flow_run.get_name()
    run_id = pipeline.new_run_id(name=name)
    with pipeline.started_run(cfg, run_id, f"flow run {name or 'local'}", config_name=cfg.name,
                              config_json=cfg.model_dump_json(),
                              flow_run_id=str(flow_run.get_id() or "")) as run:
        get_run_logger().info("run %s: config %s, prior %s, warehouse %s", run_id, cfg.name,
                              run.model_id, run.warehouse)
        recover_task(cfg, run.handle.closed)
        built = pipeline.build_corpora(pipeline.plan(cfg), FlowRunner(cfg, run_id, run.model_id))
        shards, scores = built.shards, built.scores
        record_corpora_task(cfg, run_id, shards, scores, built.ingest_counts)
        measured = metrics_task(cfg, run_id, scores)
        gates = {n: gate_task(cfg, run_id, n) for n in cfg.pairs()}
        candidates = [n for n, c in cfg.corpora.items() if c.release]
        releases = {n: release_task(cfg, run_id, n, shards[n], run.model_id, measured.values[n],
                                    gates[n], scores)
                    for n in candidates if gates[n]["success"]}
        blocked = [n for n in candidates if not gates[n]["success"]]
        markdown = summary_markdown(run_id, measured.budget, measured.values, gates, releases, blocked)
        create_markdown_artifact(markdown, key="semisynth-summary", description=f"semisynth run {run_id}")
        message = (f"release candidates blocked by the gate: {', '.join(blocked)}" if blocked
                   else "all release candidates passed")
        run.handle.finish("FAILED" if blocked else "COMPLETED", message)
        quarantined_rows, quarantined = report_data.quarantined(run.warehouse, run_id,
                                                                QUARANTINE_SHOWN)
    result = {"run_id": run_id, "warehouse": str(run.warehouse), "releases": releases,
              "blocked": blocked, "gates": {n: g["success"] for n, g in gates.items()},
              "failures": {n: g["failures"] for n, g in gates.items() if not g["success"]},
              "metrics": measured.values, "summary": markdown,
              "model_work_tokens": built.model_work_tokens,
              "quarantined_rows": quarantined_rows, "quarantined": quarantined}
    return Failed(message=message, data=result) if blocked else Completed(message=message, data=result)


def flow_for(cfg: Config):
    """nightly_refresh with the task runner sized by ``cfg`` (``dask_workers``)."""
    return nightly_refresh.with_options(task_runner=task_runner(cfg))


def run(config_path: str, overrides: list[str] | None = None) -> dict:
    """Run the flow with the configured task runner (``lifecycle.run_owned``: the data
    root's lock, a Prefect server of its own); returns the result dict."""
    cfg = load_config(config_path, overrides)
    if cfg.prior.model != "default":  # refused before a Prefect server and Dask start
        locate_model(cfg.prior.model)
    return lifecycle.run_owned(flow_for(cfg), cfg.root, cfg.lock_wait_s,
                               f"semisynth run {config_path}", str(config_path), overrides)


os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
