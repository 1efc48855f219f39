"""The nightly corpus refresh: ingest -> score+edit -> metrics -> gate -> release.

Tasks wrap the plain functions of ``semisynth.tasks`` and ``semisynth.quality``; this
module only wires them. Only this (the flow) process writes the DuckDB warehouse;
Dask workers write Parquet.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from semisynth.config import Config, load_config
from semisynth.flows.runner import GPU_TAG, score_placement, task_runner
from semisynth.quality import gate as gate_mod
from semisynth.quality import measure as measure_mod
from semisynth.quality import plots as plots_mod
from semisynth.quality import thresholds as thresholds_mod
from semisynth.tasks import corpora as corpora_mod
from semisynth.tasks import ingest as ingest_mod
from semisynth.tasks import release as release_mod
from semisynth.tasks.prior import resolve_model
from semisynth.tasks.score import score_key, score_shard
from semisynth.warehouse import db
from semisynth.warehouse.loaders import record_new_shards


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: Config, corpus: str, run_id: str) -> tuple[list[Path], dict]:
    c = cfg.corpora[corpus]
    logger = get_run_logger()
    result = ingest_mod.ingest(
        [cfg.resolve(p) for p in c.paths], cfg.root / "shards" / corpus, corpus,
        text_field=c.text_field, id_field=c.id_field, shard_docs=cfg.shard_docs,
        limit_docs=c.limit_docs,
    )
    wh = db.warehouse_path(cfg.root)
    seen = record_new_shards(wh, run_id, corpus, result.shards)
    db.insert(wh, "quarantine", [{**q, "run_id": run_id} for q in result.quarantine])
    logger.info(
        "ingest %s: %d rows in, %d ok, %d quarantined, %d shards (%d new)", corpus,
        result.rows_in, result.rows_ok, result.rows_quarantined, len(result.shards),
        sum(s.shard_hash not in seen for s in result.shards),
    )
    counts = {"rows_in": result.rows_in, "rows_ok": result.rows_ok,
              "rows_quarantined": result.rows_quarantined}
    return [Path(s.path) for s in result.shards], counts


@task(name="score-edit", cache_policy=NO_CACHE, retries=1, tags=[GPU_TAG])
def score_task(cfg: Config, shard: Path, out: Path) -> dict:
    """The accelerator stage: one shard through the prior, cached by shard and params.

    Tagged ``gpu`` (a Prefect tag concurrency limit caps how many run at once); on a Dask
    cluster with GPU workers it runs only there (see ``runner.score_placement``). A retry,
    or Dask rerunning it after its worker died, reuses the shard's score file if the lost
    attempt had finished it."""
    logger = get_run_logger()
    started = time.perf_counter()
    scored = [0]

    def progress(docs: int, tokens: int) -> None:
        scored[0] += tokens
        rate = scored[0] / max(time.perf_counter() - started, 1e-9)
        logger.info("shard %s: %d docs, %d tokens scored (%.0f tokens/s)", shard.stem, docs, scored[0], rate)

    stats = score_shard(shard, out, cfg.root, cfg.prior, cfg.edit, cfg.seed, progress=progress)
    if not stats.model_work:
        logger.info("shard %s: cached scores reused, no model work", shard.stem)
    return asdict(stats)


@task(name="metrics", cache_policy=NO_CACHE)
def metrics_task(cfg: Config, run_id: str, scores: dict[str, list[Path]]
                 ) -> tuple[dict[str, dict], int, list[Path]]:
    """Every metric on one equal token budget, stored; returns (metric values per candidate,
    the budget, the run's plots)."""
    logger = get_run_logger()
    wh = db.warehouse_path(cfg.root)
    loaded = {name: measure_mod.load_scores(paths) for name, paths in scores.items()}
    pairs = {n: c.reference for n, c in cfg.corpora.items() if c.role != "reference"}
    edited = {n: c.edited_from for n, c in cfg.corpora.items() if c.edited_from}
    rows, budget = measure_mod.measure(loaded, pairs, cfg.metrics, cfg.seed, edited_from=edited)
    logger.info("metrics on equal budgets of %d tokens (corpus tokens: %s)", budget,
                {name: c.tokens for name, c in loaded.items()})
    summary: dict[str, dict] = {}
    for r in rows:
        if r["comparison"] == "vs_reference":
            summary.setdefault(r["corpus"], {})[r["metric"]] = r["value"]
    # the rows, and the run's plots from the scores loaded above (<data root>/runs/<run_id>/)
    pngs = measure_mod.store(wh, cfg.root, run_id, rows, loaded, pairs, cfg.metrics.ngram_orders)
    return summary, budget, pngs


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(cfg: Config, run_id: str, corpus: str) -> dict:
    c = cfg.corpora[corpus]
    wh = db.warehouse_path(cfg.root)
    result = gate_mod.validate_corpus(
        wh, cfg.root / "gx", run_id, corpus, c.reference, cfg.gate, edited=c.edited_from is not None
    )
    gate_mod.record(wh, result)
    logger = get_run_logger()
    if result.success:
        logger.info("gate %s on %s: PASSED (%d expectations)", cfg.gate.suite, corpus, len(result.rows))
    else:
        logger.warning("gate %s on %s: FAILED\n%s", cfg.gate.suite, corpus, result.summary())
    return {"success": result.success, "failures": result.failures(), "rows": result.rows}


@task(name="release", cache_policy=NO_CACHE)
def release_task(cfg: Config, run_id: str, corpus: str, shards: list[Path], model_id: str,
                 metric_snapshot: dict, validation: dict) -> str:
    root = cfg.root / "releases"
    name = f"{cfg.name}-{corpus}"
    parameters = {"prior": cfg.prior.model_dump(), "edit": cfg.edit.model_dump(),
                  "beta": cfg.edit.effective_beta, "seed": cfg.seed}
    # the same shards made with the same prior and parameters are the same release: a
    # nightly run over unchanged inputs must not pile up identical versions
    content_key = hashlib.sha256(json.dumps(
        [[Path(s).stem for s in shards], model_id, parameters], sort_keys=True).encode()).hexdigest()
    existing = [r for r in release_mod.list_releases(root) if r["name"] == name]
    if existing:
        latest = Path(existing[-1]["path"])
        if json.loads((latest / "manifest.json").read_text()).get("content_key") == content_key:
            get_run_logger().info("release %s: content unchanged since %s, no new version", name, latest)
            return str(latest)
    version = release_mod.next_version(root, name)
    manifest = {
        "content_key": content_key,
        "run_id": run_id,
        "corpus": corpus,
        "config": cfg.name,
        "sources": {
            "shards": [{"shard_hash": Path(s).stem, "path": str(s)} for s in shards],
            "reference": cfg.corpora[corpus].reference,
            "edited_from": cfg.corpora[corpus].edited_from,
            "mix": cfg.corpora[corpus].mix,
        },
        "model": model_id,
        "parameters": parameters,
        "metrics": metric_snapshot,
        "validation": {"suite": cfg.gate.suite, "success": validation["success"],
                       "expectations": validation["rows"]},
    }
    path = release_mod.write_release(root, name, version, [Path(s) for s in shards], manifest)
    problems = release_mod.verify_release(path)
    if problems:
        raise RuntimeError(f"release {path} failed verification: {problems}")
    docs = sum(pq.read_metadata(s).num_rows for s in shards)
    sha = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
    db.insert(db.warehouse_path(cfg.root), "releases", [{
        "name": name, "version": version, "run_id": run_id, "corpus": corpus, "path": str(path),
        "manifest_sha256": sha, "documents": docs, "tokens": None, "created_at": db.now(),
    }])
    return str(path)


def summary_markdown(run_id: str, budget_note: str, metrics: dict, gates: dict,
                     releases: dict, blocked: list[str]) -> str:
    shown = ["ppl_q50", "ppl_low_frac", "ppl_tail_frac", "ppl_ks", "distinct_2",
             "top1pct_mass_2", "ref_coverage_2", "js_2", "edit_rate"]
    lines = [f"# semisynth run `{run_id}`", "", budget_note, "", "## Metrics per corpus (vs its reference)", "",
             "| corpus | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for corpus, values in metrics.items():
        cells = [f"{values[m]:.4g}" if m in values and values[m] is not None else "" for m in shown]
        lines.append(f"| {corpus} | " + " | ".join(cells) + " |")
    lines += ["", "## Gate verdicts (suite `coverage`)", ""]
    for corpus, g in gates.items():
        verdict = "PASSED" if g["success"] else "FAILED"
        lines.append(f"- **{corpus}**: {verdict}")
        for f in g["failures"]:
            lines.append(f"  - `{f['metric']}`: {thresholds_mod.failure_reason(f)}")
    lines += ["", "## Releases", ""]
    lines += [f"- {c}: `{p}`" for c, p in releases.items()] or ["- none"]
    lines += [f"- {c}: blocked by the gate, not released" for c in blocked]
    return "\n".join(lines)


# The task runner is declared here too (not only in ``run``): a Prefect worker that loads
# the flow from its entrypoint (deployments/prefect.yaml) must score on Dask as well.
@flow(name="nightly_refresh", log_prints=True, task_runner=task_runner())
def nightly_refresh(config_path: str, overrides: list[str] | None = None) -> dict:
    """Ingest every source, score and edit with the prior, measure each corpus against
    its human reference, gate the release candidates, release those that pass."""
    cfg = load_config(config_path, overrides)
    logger = get_run_logger()
    wh = db.init(db.warehouse_path(cfg.root))
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{flow_run.get_name() or 'local'}"
    folder, model_id = resolve_model(cfg.prior.model, cfg.root)
    db.insert(wh, "runs", [{
        "run_id": run_id, "flow_run_id": str(flow_run.get_id() or ""), "config_name": cfg.name,
        "config_json": cfg.model_dump_json(), "started_at": db.now(), "status": "RUNNING", "model": model_id,
    }])
    logger.info("run %s: config %s, prior %s, warehouse %s", run_id, cfg.name, model_id, wh)
    try:
        return _refresh(cfg, run_id, model_id, wh)
    except BaseException as exc:
        db.execute(wh, "UPDATE runs SET finished_at = ?, status = 'CRASHED', message = ? WHERE run_id = ?",
                   [db.now(), f"{type(exc).__name__}: {exc}", run_id])
        raise


def _refresh(cfg: Config, run_id: str, model_id: str, wh: Path):
    key = score_key(model_id, cfg.prior, cfg.edit, cfg.seed)
    score_dir = cfg.root / "scores" / key
    shards: dict[str, list[Path]] = {}
    scores: dict[str, list[Path]] = {}
    model_work_tokens = [0]

    def score_all(names: list[str]) -> None:
        with score_placement():  # GPU workers only, when the cluster has them
            futures = {n: [score_task.submit(cfg, s, score_dir / s.name) for s in shards[n]] for n in names}
        for n, fs in futures.items():
            stats = [f.result() for f in fs]
            scores[n] = [Path(st["path"]) for st in stats]
            model_work_tokens[0] += sum(st["scored_tokens"] for st in stats if st["model_work"])

    order = cfg.order()
    file_backed = [n for n in order if cfg.corpora[n].paths]
    ingest_counts = {}
    for n in file_backed:
        shards[n], ingest_counts[n] = ingest_task(cfg, n, run_id)
    score_all(file_backed)
    for n in order:
        c = cfg.corpora[n]
        if c.edited_from:
            shards[n] = [
                corpora_mod.edited_shard(sc, sh, cfg.root / "shards" / n)
                for sh, sc in zip(shards[c.edited_from], scores[c.edited_from], strict=True)
            ]
            score_all([n])
        elif c.mix:
            shard, score = corpora_mod.mixed_shard(
                {m: (shards[m], scores[m]) for m in c.mix}, c.mix, cfg.seed,
                cfg.root / "shards" / n, score_dir,
            )
            shards[n], scores[n] = [shard], [score]
    for n, c in cfg.corpora.items():
        if not c.paths:  # derived corpora: their shards are made here, not ingested
            origin = f"toedit:{c.edited_from}" if c.edited_from else "mix"
            record_new_shards(wh, run_id, n, [
                ingest_mod.ShardInfo(p.stem, str(p), pq.read_metadata(p).num_rows, origin)
                for p in shards[n]
            ])
    _record_corpora(cfg, run_id, shards, scores, ingest_counts)
    summary, budget, pngs = metrics_task(cfg, run_id, scores)
    for png in pngs:  # attached to the flow run
        create_markdown_artifact(plots_mod.image_markdown(png), key=plots_mod.artifact_key(png),
                                 description=f"semisynth run {run_id}: {png.name}")
    gates = {n: gate_task(cfg, run_id, n) for n, c in cfg.corpora.items() if c.role != "reference"}
    releases, blocked = {}, []
    for n, c in cfg.corpora.items():
        if not c.release:
            continue
        if gates[n]["success"]:
            releases[n] = release_task(cfg, run_id, n, shards[n], model_id, summary[n], gates[n])
        else:
            blocked.append(n)
    markdown = summary_markdown(run_id, f"Equal token budget per comparison: {budget} tokens.",
                                summary, gates, releases, blocked)
    create_markdown_artifact(markdown, key="semisynth-summary", description=f"semisynth run {run_id}")
    status = "FAILED" if blocked else "COMPLETED"
    message = f"release candidates blocked by the gate: {', '.join(blocked)}" if blocked else "all release candidates passed"
    db.execute(wh, "UPDATE runs SET finished_at = ?, status = ?, message = ? WHERE run_id = ?",
               [db.now(), status, message, run_id])
    result = {"run_id": run_id, "warehouse": str(wh), "releases": releases, "blocked": blocked,
              "gates": {n: g["success"] for n, g in gates.items()},
              "failures": {n: g["failures"] for n, g in gates.items() if not g["success"]},
              "metrics": summary, "summary": markdown, "model_work_tokens": model_work_tokens[0]}
    if blocked:
        return Failed(message=message, data=result)
    return Completed(message=message, data=result)


def _record_corpora(cfg: Config, run_id: str, shards: dict, scores: dict, ingest_counts: dict) -> None:
    rows, doc_rows, edit_rows = [], [], []
    for n, c in cfg.corpora.items():
        origin = "files" if c.paths else ("edited_from:" + c.edited_from if c.edited_from else "mix")
        docs = tokens = 0
        for shard, score in zip(shards[n], scores[n], strict=True):
            t = pq.read_table(score, columns=["id", "doc_hash", "scored_tokens", "nll_sum", "ppl",
                                               "revised_tokens", "edited_tokens", "dropped_tokens"]).to_pandas()
            docs += len(t)
            tokens += int(t["scored_tokens"].sum())
            doc_rows.append(t.rename(columns={"id": "doc_id", "scored_tokens": "tokens"})[
                ["doc_id", "doc_hash", "tokens", "nll_sum", "ppl"]].assign(
                run_id=run_id, corpus=n, shard_hash=Path(shard).stem))
            edited = [m for m, mc in cfg.corpora.items() if mc.edited_from == n]
            for target in edited:
                edit_rows.append(t.rename(columns={"id": "doc_id", "scored_tokens": "tokens"})[
                    ["doc_id", "tokens", "revised_tokens", "edited_tokens", "dropped_tokens"]].assign(
                    run_id=run_id, corpus=target, source_corpus=n, shard_hash=Path(shard).stem,
                    strategy=cfg.edit.strategy, threshold=cfg.edit.threshold, top_k=cfg.edit.top_k,
                    beta=cfg.edit.effective_beta, seed=cfg.seed))
        rows.append({"run_id": run_id, "corpus": n, "role": c.role, "reference": c.reference,
                     "origin": origin, "documents": docs, "tokens": tokens, "shards": len(shards[n]),
                     **ingest_counts.get(n, {})})
    wh = db.warehouse_path(cfg.root)
    db.insert(wh, "corpora", rows)
    for table, frames in (("doc_scores", doc_rows), ("edits", edit_rows)):
        if frames:
            db.insert(wh, table, pd.concat(frames, ignore_index=True))


def flow_for(cfg: Config):
    """nightly_refresh with the task runner sized by ``cfg`` (``dask_workers``)."""
    return nightly_refresh.with_options(task_runner=task_runner(cfg))


def run(config_path: str, overrides: list[str] | None = None) -> dict:
    """Run the flow with the configured task runner; returns the result dict."""
    state = flow_for(load_config(config_path, overrides))(
        str(config_path), overrides, return_state=True
    )
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):  # a crash, not a gate verdict
        raise result
    result["state"] = state.type.value
    result["flow_run_id"] = str(state.state_details.flow_run_id)
    return result


os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
