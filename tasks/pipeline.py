"""The pipeline, described once: which corpora of a config are made how, in what order,
which are scored; and the start of a run, shared by everything that records one.

``plan(cfg)`` lists the steps: every ingested corpus first (their scoring can then run at
once, on as many workers as there are), then the derived ones in dependency order. An
ingested or edited corpus is scored by the prior; a mixture carries its components' scores.
``build_corpora`` walks the plan with a ``Runner``, which says how each step runs:

- ``flows/nightly.py``'s ``FlowRunner``: Prefect tasks, the scoring submitted to Dask;
- ``semisynth/commands.py``'s ``InProcessRunner``: plain calls with progress bars, for
  ``metrics``, ``validate`` and ``estimate``.

``started_run`` is the start of a run for the flows and the commands alike: the data root's
lock, the warehouse, the prior's id, the score folder and the ``runs`` row. What comes after
the corpora (measure, gate, release) is the flows' and commands' own wiring of stage
functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from semisynth.tasks.prior import resolve_model
from semisynth.tasks.score import score_key
from semisynth.warehouse import db, records
from semisynth.warehouse.lock import data_root_lock

Make = Literal["ingest", "edit", "mix"]


@dataclass(frozen=True)
class Step:
    """One corpus made: read from its files or dataset (``ingest``), ToEdit'ed from another
    corpus's scores (``edit``), or mixed from others (``mix``); then scored by the prior
    unless it carries its components' scores."""
    corpus: str
    make: Make

    @property
    def scored(self) -> bool:
        return self.make != "mix"


def plan(cfg) -> list[Step]:
    """The steps that build every corpus of ``cfg`` (a ``semisynth.config.Config``): the
    ingested ones first, then the derived ones, each after those it is made from."""
    steps = []
    for name in cfg.order():
        c = cfg.corpora[name]
        steps.append(Step(name, "ingest" if c.ingested else "edit" if c.edited_from else "mix"))
    return sorted(steps, key=lambda s: s.make != "ingest")  # stable: dependency order kept


class Runner(Protocol):
    """How the steps run. Each method records what it made in the warehouse."""

    def ingest(self, corpus: str) -> tuple[list[Path], dict]:
        """The corpus's shards and its ingest counts (``ingest.ingest_columns``)."""

    def derive(self, corpus: str, shards: dict[str, list[Path]],
               scores: dict[str, list[Path]]) -> tuple[list[Path], list[Path] | None]:
        """The derived corpus's shards, and the scores it carries (a mixture's) or None."""

    def score(self, shards: dict[str, list[Path]]) -> tuple[dict[str, list[Path]], int]:
        """The score files of each corpus's shards (in their order), and the tokens the
        prior scored now (0 for shards whose scores were cached)."""


@dataclass
class Built:
    """Every corpus built: shards and score files by corpus, ingest counts by ingested
    corpus, and the tokens the prior scored in this run."""
    shards: dict[str, list[Path]] = field(default_factory=dict)
    scores: dict[str, list[Path]] = field(default_factory=dict)
    ingest_counts: dict[str, dict] = field(default_factory=dict)
    model_work_tokens: int = 0


def build_corpora(cfg, runner: Runner) -> Built:
    """Run ``plan(cfg)`` with ``runner``: the ingested corpora scored together, then each
    derived corpus made and, unless it carries scores, scored."""
    built = Built()

    def score(names: list[str]) -> None:
        if names:
            scores, work = runner.score({n: built.shards[n] for n in names})
            built.scores.update(scores)
            built.model_work_tokens += work

    steps = plan(cfg)
    for step in steps:
        if step.make == "ingest":
            built.shards[step.corpus], built.ingest_counts[step.corpus] = runner.ingest(step.corpus)
    score([s.corpus for s in steps if s.make == "ingest"])
    for step in steps:
        if step.make != "ingest":
            built.shards[step.corpus], carried = runner.derive(step.corpus, built.shards,
                                                               built.scores)
            if step.scored:
                score([step.corpus])
            else:
                built.scores[step.corpus] = carried
    return built


def new_run_id(kind: str | None = None, name: str | None = None) -> str:
    """A run's id: ``<UTC time>-<flow run name>`` for a flow run, ``<kind>-<UTC time>-<µs>``
    for a command's run."""
    now = datetime.now(UTC)
    if kind is None:
        return f"{now:%Y%m%dT%H%M%S}-{name or 'local'}"
    return f"{kind}-{now:%Y%m%dT%H%M%S}-{now:%f}"


@dataclass
class StartedRun:
    """What a run has once started: its id, the warehouse, the prior's recorded id, the
    score folder of the config's prior and edit, and its ``runs`` row's handle."""
    run_id: str
    warehouse: Path
    model_id: str
    score_dir: Path
    handle: records.RunHandle


def score_dir(cfg, model_id: str, edit=None) -> Path:
    """Where the score files of ``cfg``'s prior, ``edit`` (the config's by default) and seed
    go: one folder per score key, so a change of any of them scores again."""
    return cfg.root / "scores" / score_key(model_id, cfg.prior, edit or cfg.edit, cfg.seed)


@contextlib.contextmanager
def started_run(cfg, run_id: str, holder: str, *, config_name: str, config_json: str,
                message: str | None = None, flow_run_id: str | None = None
                ) -> Iterator[StartedRun]:
    """Hold the data root's lock (``holder`` says who, to a run that waits), open the
    warehouse, resolve the prior and record the run as RUNNING until the body ends
    (``records.tracked_run``). ``cfg`` has its precision pinned (``prior.pin_precision``)."""
    with data_root_lock(cfg.root, cfg.lock_wait_s, holder):
        wh = db.init(db.warehouse_path(cfg.root))
        _, model_id = resolve_model(cfg.prior.model, cfg.root)
        with records.tracked_run(wh, run_id, config_name=config_name, config_json=config_json,
                                 model=model_id, message=message, flow_run_id=flow_run_id) as run:
            yield StartedRun(run_id, wh, model_id, score_dir(cfg, model_id), run)
