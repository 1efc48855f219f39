"""The pipeline, described once: which corpora of a config are made how, from what, in
what order, which are scored under which edit settings; and the start of a run, shared by
everything that records one.

``plan(cfg)`` lists the steps: every ingested corpus first, then the derived ones in
dependency order. An ingested or edited corpus is scored by the prior; a mixture carries
its components' scores. ``build_corpora`` walks the steps with a ``Runner``, which says how
each step runs:

- ``flows/nightly.py``'s ``FlowRunner``: Prefect tasks, the scoring submitted to Dask;
- ``flows/experiment.py``'s ``ExperimentRunner``: the same, over the experiment's sources
  (``tasks/experiment_plan.steps``), waiting for the prior to write a generated one;
- ``semisynth/commands.py``'s ``InProcessRunner``: plain calls with progress bars, for
  ``metrics``, ``validate`` and ``estimate``.

``started_run`` is the start of a run for the flows and the commands alike: the data root's
lock, the warehouse, the prior's id and the ``runs`` row. What comes after the corpora
(measure, gate, release; the experiment's streams and training) is the flows' and
commands' own wiring of stage functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from semisynth.config import EditConfig
from semisynth.tasks.prior import resolve_model
from semisynth.tasks.score import score_key
from semisynth.warehouse import db, records
from semisynth.warehouse.lock import data_root_lock

Make = Literal["ingest", "edit", "mix"]


@dataclass(frozen=True)
class Step:
    """One corpus made: read from its files or dataset (``ingest``), ToEdit'ed from another
    corpus's scores (``edit``), or mixed from others (``mix``), from ``sources``; then scored
    by the prior under ``edit`` (None: the config's edit settings) unless ``scored`` is
    False: a mixture carries its components' scores, and a corpus read only to evaluate on
    (the experiment's held-out documents) is never scored. An ingested corpus with
    ``same_files`` reads the files of that corpus, ingested before it: it takes its shards
    rather than reading them again (and is scored under settings of its own)."""
    corpus: str
    make: Make
    sources: tuple[str, ...] = ()
    scored: bool = True
    edit: EditConfig | None = None
    same_files: str | None = None


def plan(cfg, corpora: Collection[str] | None = None,
         edits: Mapping[str, EditConfig] | None = None, unscored: Collection[str] = (),
         same_files: Mapping[str, str] | None = None) -> list[Step]:
    """The steps that build ``corpora`` (every corpus of ``cfg``, a
    ``semisynth.config.Config``, by default) and what they are made from: the ingested ones
    first, then the derived ones, each after its sources. ``edits`` gives a corpus edit
    settings of its own to be scored under; the corpora in ``unscored`` are only read;
    ``same_files`` maps an ingested corpus to an earlier one that reads the same files.
    A name in them that the plan does not build, an unscored corpus another is made from,
    or a corpus sharing the files of one not ingested before it is a ValueError."""
    edits, same_files = edits or {}, same_files or {}
    names = cfg.closure(cfg.corpora if corpora is None else corpora)
    ingested = [n for n in names if cfg.corpora[n].ingested]
    for given, what in ((edits, "edits"), (unscored, "unscored"), (same_files, "same_files")):
        if unknown := sorted(set(given) - set(names)):
            raise ValueError(f"plan: {what} names corpora it does not build: {unknown}")
    for name, other in same_files.items():
        earlier = ingested[:ingested.index(name)] if name in ingested else []
        if other not in earlier:
            raise ValueError(f"plan: {name} may share the files of a corpus ingested before "
                             f"it, not of {other!r}")
    steps = []
    for name in names:
        c = cfg.corpora[name]
        if read := sorted(set(c.made_from) & set(unscored)):
            raise ValueError(f"plan: {name} is made from {read}, which are not scored")
        make = "ingest" if c.ingested else "edit" if c.edited_from else "mix"
        steps.append(Step(name, make, tuple(c.made_from), scored=make != "mix" and
                          name not in unscored, edit=edits.get(name),
                          same_files=same_files.get(name)))
    return sorted(steps, key=lambda s: s.make != "ingest")  # stable: dependency order kept


class Runner(Protocol):
    """How the steps run. Each method records what it made in the warehouse."""

    def ingest(self, corpus: str) -> tuple[list[Path], dict]:
        """The corpus's shards and its ingest counts (``ingest.ingest_columns``)."""

    def derive(self, corpus: str, shards: dict[str, list[Path]],
               scores: dict[str, list[Path]]) -> tuple[list[Path], list[Path] | None]:
        """The derived corpus's shards, and the scores it carries (a mixture's) or None."""

    def submit(self, corpus: str, shards: list[Path], edit: EditConfig | None) -> object:
        """Start scoring the corpus's shards under ``edit`` (None: the config's), or only
        note them; a handle for ``collect``."""

    def collect(self, handle) -> tuple[list[Path], int]:
        """A submitted corpus's score files (in its shards' order), and the tokens the prior
        scored for it now (0 for shards whose scores were cached)."""


@dataclass
class Built:
    """Every corpus built: shards and score files by corpus, ingest counts by corpus read
    from its files (not one that shares another's), and the tokens the prior scored in
    this run."""
    shards: dict[str, list[Path]] = field(default_factory=dict)
    scores: dict[str, list[Path]] = field(default_factory=dict)
    ingest_counts: dict[str, dict] = field(default_factory=dict)
    model_work_tokens: int = 0


def build_corpora(steps: list[Step], runner: Runner) -> Built:
    """Run ``steps`` (``plan``'s) with ``runner``. A corpus's scoring is submitted as soon
    as it is made and collected only when a derived corpus needs it, or at the end: on
    the flows' Dask cluster the scoring of one corpus overlaps the ingest of the next; the
    commands' runner scores in ``collect``, once every corpus has been read."""
    built, pending = Built(), {}

    def collect(names) -> None:
        for name in [n for n in names if n in pending]:
            built.scores[name], work = runner.collect(pending.pop(name))
            built.model_work_tokens += work

    for step in steps:
        name = step.corpus
        if step.same_files:
            built.shards[name] = built.shards[step.same_files]
        elif step.make == "ingest":
            built.shards[name], built.ingest_counts[name] = runner.ingest(name)
        else:
            collect(step.sources)
            built.shards[name], carried = runner.derive(name, built.shards, built.scores)
            if carried is not None:
                built.scores[name] = carried
        if step.scored:
            pending[name] = runner.submit(name, built.shards[name], step.edit)
    collect(list(pending))
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
    """What a run has once started: its id, the warehouse, the prior's recorded id and its
    ``runs`` row's handle."""
    run_id: str
    warehouse: Path
    model_id: str
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
            yield StartedRun(run_id, wh, model_id, run)
