"""The collapse experiment planned: its config as a pipeline config (the sources and arms
as corpora, so that ingest, score+edit, derive, records and metrics run as in the nightly
flow), the pipeline steps that build its pools and edited arms (tasks/pipeline.py), the
sources' generation jobs, and the warehouse rows of its results. The arms' streams are
built in tasks/experiment.py; the prior writes the generated sources in
tasks/experiment_generation.py."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from semisynth.config import EXPERIMENT_SOURCES, Config, ExperimentConfig
from semisynth.tasks import pipeline
from semisynth.tasks.pipeline import Step

HUMAN, SYNTHETIC, HELDOUT, HELDOUT_SYNTHETIC = EXPERIMENT_SOURCES
EVAL_CORPORA = (HELDOUT, HELDOUT_SYNTHETIC)


def edit_source(arm: str) -> str:
    """The pipeline's name for the human pool scored with an edited arm's edit settings."""
    return f"{arm}.source"


def pipeline_config(ecfg: ExperimentConfig) -> Config:
    """The experiment as a pipeline config, so that ingest, score+edit, derive, records and
    metrics run as they do in the nightly flow: the four sources as corpora, each arm as a
    corpus measured against the human pool (a mixture arm as a ``mix`` of the pools, an
    edited arm ``edited_from`` the human pool scored with its edit settings)."""

    def files(source, role: str) -> dict:
        return {"paths": source.paths, "text_field": source.text_field,
                "id_field": source.id_field, "limit_docs": source.limit_docs, "role": role,
                **({"reference": HUMAN} if role != "reference" else {})}

    # the sources the prior writes come last: the pipeline ingests in this order, and the
    # human pool's scoring then runs while they are generated
    corpora = {HUMAN: files(ecfg.human, "reference"),
               **{edit_source(a): files(ecfg.human, "monitored") for a in edited_arms(ecfg)},
               HELDOUT: files(ecfg.heldout, "monitored"),
               SYNTHETIC: files(ecfg.synthetic, "monitored")}
    if ecfg.heldout_synthetic is not None:
        corpora[HELDOUT_SYNTHETIC] = files(ecfg.heldout_synthetic, "monitored")
    for name, arm in ecfg.arms.items():
        if arm.edit is not None:
            corpora[name] = {"edited_from": edit_source(name), "reference": HUMAN}
        elif arm.share in (0.0, 1.0):
            corpora[name] = {"mix": {HUMAN if arm.share == 0.0 else SYNTHETIC: 1.0},
                             "reference": HUMAN}
        else:
            corpora[name] = {"mix": {HUMAN: 1.0 - arm.share, SYNTHETIC: arm.share},
                             "reference": HUMAN}
    return Config(name=ecfg.name, data_root=ecfg.data_root, seed=ecfg.seed,
                  shard_docs=ecfg.shard_docs, dask_workers=ecfg.dask_workers, prior=ecfg.prior,
                  edit=ecfg.edit, corpora=corpora, metrics=ecfg.metrics,
                  lock_wait_s=ecfg.lock_wait_s)


def edited_arms(ecfg: ExperimentConfig) -> list[str]:
    """The arms trained on ToEdit'ed human text."""
    return [name for name, arm in ecfg.arms.items() if arm.edit is not None]


def steps(ecfg: ExperimentConfig, pcfg: Config) -> list[Step]:
    """The pipeline steps that build the experiment's corpora: every source, each edited
    arm's source (the human pool's shards, scored under the arm's edit settings) and the
    edited arm. The held-out sources are only read, never scored; the mixture arms are
    streams cut from the pools (tasks/experiment.py), not corpora."""
    edited = edited_arms(ecfg)
    return pipeline.plan(pcfg, corpora=[*source_configs(ecfg), *edited],
                         edits={edit_source(a): ecfg.arm_edit(a) for a in edited},
                         unscored=[n for n in EVAL_CORPORA if n in pcfg.corpora],
                         same_files={edit_source(a): HUMAN for a in edited})


def source_configs(ecfg: ExperimentConfig) -> dict:
    """The experiment's file-backed sources by pipeline name."""
    sources = {HUMAN: ecfg.human, SYNTHETIC: ecfg.synthetic, HELDOUT: ecfg.heldout}
    if ecfg.heldout_synthetic is not None:
        sources[HELDOUT_SYNTHETIC] = ecfg.heldout_synthetic
    return sources


def generation_jobs(ecfg: ExperimentConfig, pcfg: Config) -> list[tuple[str, object]]:
    """(source, ``generate`` entry) of each entry whose file is missing (the others are
    cached); an entry must write a file its source reads."""
    jobs = []
    for name, source in source_configs(ecfg).items():
        patterns = [pcfg.resolve(p) for p in source.paths]
        for gen in source.generate:
            out = pcfg.resolve(gen.out)
            if not any(fnmatch.fnmatch(out, p) for p in patterns):
                raise ValueError(f"{name}: generate.out {gen.out!r} is not one of its paths")
            if not Path(out).exists():
                jobs.append((name, gen))
    return jobs


def result_rows(ecfg: ExperimentConfig, run_id: str, arm: str, result: dict) -> list[dict]:
    """``experiment_results`` rows of one trained (arm, seed): one per held-out corpus."""
    a, edit = ecfg.arms[arm], ecfg.arm_edit(arm)
    return [{"experiment": ecfg.name, "run_id": run_id, "arm": arm, "seed": result["seed"],
             "synthetic_share": a.share, "edit_threshold": getattr(edit.params, "threshold", None) if edit else None,
             "selection": a.select, "train_tokens": ecfg.train_tokens, "eval_corpus": corpus,
             "eval_tokens": e["tokens"], "eval_ppl": e["ppl"], "steps": result["steps"],
             "parameters": result["parameters"], "vocab_size": result["vocab_size"],
             "final_train_loss": result["losses"][-1], "train_seconds": result["train_seconds"],
             "cached": result["cached"], "result_key": result["key"],
             "model": ecfg.model.model_dump_json()}
            for corpus, e in result["evals"].items()]
