"""The metrics a run measures, gates and reports, each declared once (``Metric``).

A declaration names the metric (or a family with one metric per n-gram order,
``distinct_1``, ``distinct_2``, ...), says how ``compare`` computes it from the two samples
(``compute``, and ``ci`` for a bootstrap interval), which way collapse moves it, and how the
gate bounds it (``Relative``: the reference's split-half yardstick Y moved by a slack in that
direction; ``Fixed``: a fixed range). Everything else is derived from the declarations:

- ``comparison.compare``: the rows of every metric, their order ``n`` from the declaration;
- ``GateConfig``: one key per ``Setting`` of a rule (``settings_model``), validated with the
  declared default and bounds (``semisynth.config``);
- ``thresholds``: the bound of each gated metric, hence the GX suite (``quality.suite``);
- the report's metric order and the run summary's columns (``report_position``,
  ``summary_metrics``).

The built-in metrics are declared in ``quality/builtin_metrics.py``, registered before any
other on the first look-up. A plug-in is a module that calls ``register`` when imported; the
config's ``metrics.plugins`` lists the modules to import, so every process that loads the
config (the CLI, a flow run on a Prefect worker) has them. This module imports nothing
heavy: ``semisynth.config`` reads it to build ``GateConfig``.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, create_model

Collapse = Literal["up", "down"]  # which way collapse moves a metric
BUILTINS = "semisynth.quality.builtin_metrics"
# The order the run summary shows of each per-order family (distinct_2, js_2, ...): bigrams
# are the middle of the default orders 1..3.
SUMMARY_ORDER = 2
# GateConfig's own keys, which no setting of a rule may take
GATE_KEYS = frozenset({"suite", "ci_z"})


@dataclass(frozen=True)
class Setting:
    """One key of the ``gate`` section of the config (``GateConfig``): its default, its
    allowed range and its description. ``per_order``: the value may also be a mapping
    {n-gram order: value} (an order not listed takes the loosest value given)."""

    key: str
    default: float | dict[int, float]
    description: str = ""
    ge: float | None = 0.0
    le: float | None = None
    per_order: bool = False


@dataclass(frozen=True)
class Relative:
    """Bounded relative to the reference's split-half value Y, in the direction collapse
    moves the metric: ``<= Y + slack`` for ``up``, ``>= Y - slack`` for ``down``; the slack is
    the larger of the fixed slack and the sampling noise of the stored CIs (thresholds).

    ``scale``: how ``slack``'s value is read. ``add``: the fixed slack is the value itself
    (``*_max_excess``, ``*_max_deficit``). ``ratio``: the bound is Y times the value
    (``distinct_n >= 0.85 Y``: a fixed slack of 0.15 Y)."""

    collapse: Collapse
    slack: Setting
    scale: Literal["add", "ratio"] = "add"

    def fixed_slack(self, y: float, value: float) -> float:
        if self.scale == "add":
            return value
        return (value - 1) * y if self.collapse == "up" else (1 - value) * y

    def loosest(self, values: Iterable[float]) -> float:
        """Of per-order values, the one that bounds least (for an order not listed)."""
        return min(values) if (self.scale, self.collapse) == ("ratio", "down") else max(values)


@dataclass(frozen=True)
class Fixed:
    """Bounded by fixed values (``low`` and/or ``high`` settings), with no yardstick.
    ``when``: gated only for candidates the gate is told are edited (``edited``) or have a
    synthetic reference (``synthetic_reference``), whether or not a row of it is stored (a
    missing one fails); None: whenever the metric is measured."""

    low: Setting | None = None
    high: Setting | None = None
    when: Literal["edited", "synthetic_reference"] | None = None

    @property
    def settings(self) -> tuple[Setting, ...]:
        return tuple(s for s in (self.low, self.high) if s is not None)


@dataclass(frozen=True)
class MetricInputs:
    """What ``compare`` hands a metric's ``compute`` and ``ci``: both samples at the equal
    budget. ``cand_ppl``/``ref_ppl``: the perplexities of the documents that have one;
    ``table(side, n)``: (sorted unique packed n-gram keys, counts) of order n of side
    "candidate" or "reference" (``ngrams.NgramCounts``); ``candidate_tokens()``: the
    candidate's documents as token id arrays (in memory: read only when a metric asks)."""

    cand_ppl: Any
    ref_ppl: Any
    orders: tuple[int, ...]
    buckets: int  # metrics.js_buckets
    bootstrap: int  # replicates of a CI (metrics.bootstrap)
    seed: int
    _tables: Callable[[str], dict[int, tuple[Any, Any]]]
    _candidate_tokens: Callable[[], list]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def table(self, side: Literal["candidate", "reference"], n: int) -> tuple[Any, Any]:
        if side not in self._cache:  # every order at once: lower orders come from the top one
            self._cache[side] = self._tables(side)
        return self._cache[side][n]

    def candidate_tokens(self) -> list:
        if "tokens" not in self._cache:
            self._cache["tokens"] = self._candidate_tokens()
        return self._cache["tokens"]


@dataclass(frozen=True)
class Metric:
    """One metric, or with ``per_order`` one per n-gram order of ``metrics.ngram_orders``
    (named ``<name>_<n>``, the order stored in the ``n`` column of ``metrics``).

    ``compute(inputs, n) -> float`` (n is None without ``per_order``) is called by
    ``compare`` with a ``MetricInputs``; ``reads="perplexity"``: the metric is left out when
    a side has no document with a perplexity; ``reads="ngrams"``: it reads the count tables
    or the token ids, which every sample has. ``compute=None`` (``reads=None``): measured
    outside ``compare`` (``quality/measure.py``: edit_rate, synthetic_share), declared here
    for its rule and place. ``ci(inputs, n) -> (low, high)``: its bootstrap 95% interval,
    stored with the value and widening a relative bound to the noise it measures, for the
    orders ``ci_orders`` (None: all). ``rule``: how the gate bounds it (None: reported only).
    ``summary``: a column of the run's summary (a per-order family: its order
    ``SUMMARY_ORDER``)."""

    name: str
    compute: Callable[[MetricInputs, int | None], float] | None
    reads: Literal["perplexity", "ngrams"] | None
    description: str
    rule: Relative | Fixed | None = None
    per_order: bool = False
    ci: Callable[[MetricInputs, int | None], tuple[float, float]] | None = None
    ci_orders: tuple[int, ...] | None = None
    summary: bool = False

    def metric_name(self, n: int | None) -> str:
        return f"{self.name}_{n}" if self.per_order else self.name

    def names(self, orders: Iterable[int]) -> list[str]:
        return [self.metric_name(n) for n in orders] if self.per_order else [self.name]

    def order_of(self, metric: str) -> int | None | bool:
        """The order n of one of this declaration's metric names (None: not per order);
        False when ``metric`` is none of its names. The inverse of ``metric_name``."""
        if not self.per_order:
            return None if metric == self.name else False
        match = re.fullmatch(re.escape(self.name) + r"_([1-9][0-9]*)", metric)
        return int(match.group(1)) if match else False

    @property
    def settings(self) -> tuple[Setting, ...]:
        if isinstance(self.rule, Relative):
            return (self.rule.slack,)
        return self.rule.settings if isinstance(self.rule, Fixed) else ()


_metrics: dict[str, Metric] = {}
_lock = threading.RLock()
_builtins_loaded = False
_version = 0  # bumped on every change: settings_model's cache key


def _ensure_builtins() -> None:
    global _builtins_loaded
    with _lock:
        if _builtins_loaded:
            return
        _builtins_loaded = True  # before the import: its register() calls come back here
        try:
            importlib.import_module(BUILTINS)
        except BaseException:
            _builtins_loaded = False
            raise


def register(metric: Metric) -> Metric:
    """Add ``metric`` after those declared so far (the built-ins first). Refused: a name or
    setting key another metric has, a name another metric's names take (``js`` per order
    owns ``js_2``), a compute without ``reads`` or the reverse."""
    _ensure_builtins()
    with _lock:
        problems = []
        if (metric.compute is None) != (metric.reads is None):
            problems.append("compute and reads go together (both None: measured outside "
                            "compare)")
        if isinstance(metric.rule, Fixed) and metric.per_order:
            problems.append("fixed bounds are for a metric without orders")
        if isinstance(metric.rule, Fixed) and not metric.rule.settings:
            problems.append("fixed bounds need a low or a high setting")
        if metric.ci is not None and metric.compute is None:
            problems.append("a ci needs a compute")
        own = metric.names((1,))
        for other in _metrics.values():
            if other.name == metric.name or any(other.order_of(n) is not False for n in own) \
                    or any(metric.order_of(n) is not False for n in other.names((1,))):
                problems.append(f"its names clash with those of metric {other.name!r}")
            taken = {s.key for s in other.settings}
            problems += [f"setting {s.key!r} is metric {other.name!r}'s" for s in metric.settings
                         if s.key in taken]
        problems += [f"setting {s.key!r} is a key of GateConfig itself"
                     for s in metric.settings if s.key in GATE_KEYS]
        if problems:
            raise ValueError(f"metric {metric.name!r} not registered: " + "; ".join(problems))
        global _version
        _metrics[metric.name] = metric
        _version += 1
    return metric


def unregister(name: str) -> Metric:
    """Remove a registered metric (a test's plug-in, after the test)."""
    global _version
    with _lock:
        metric = _metrics.pop(name)
        _version += 1
    return metric


def metrics() -> list[Metric]:
    """Every registered metric, in registration order (the built-ins first)."""
    _ensure_builtins()
    with _lock:
        return list(_metrics.values())


def lookup(metric: str) -> tuple[Metric, int | None] | None:
    """The declaration a metric name belongs to and its order (None: not per order)."""
    for declared in metrics():
        n = declared.order_of(metric)
        if n is not False:
            return declared, n
    return None


def computed(orders: Iterable[int]) -> Iterator[tuple[Metric, int | None]]:
    """(declaration, n) of every metric ``compare`` computes at these n-gram orders: first
    those without orders, then per order n those of every per-order family."""
    declared = [m for m in metrics() if m.compute is not None]
    yield from ((m, None) for m in declared if not m.per_order)
    for n in orders:
        yield from ((m, n) for m in declared if m.per_order)


def report_position(metric: str) -> tuple:
    """Sort key of metric names: declaration order, then order n; unknown names last."""
    found = lookup(metric)
    if found is None:
        return (len(metrics()), 0, metric)
    declared, n = found
    return (metrics().index(declared), n or 0, metric)


def summary_metrics() -> tuple[str, ...]:
    """The columns of the run summary: the metrics declared ``summary``."""
    return tuple(m.metric_name(SUMMARY_ORDER if m.per_order else None)
                 for m in metrics() if m.summary)


def settings() -> list[Setting]:
    """Every setting of every rule: GateConfig's per-metric keys."""
    return [s for m in metrics() for s in m.settings]


_models: dict[int, type] = {}


def settings_model() -> type:
    """A pydantic model with one field per ``settings()`` key (its default, range and
    description) and no other key: what ``GateConfig`` validates its per-metric keys with.
    Rebuilt when a metric is registered or removed."""
    _ensure_builtins()
    with _lock:
        if _version in _models:
            return _models[_version]
        fields = {}
        for s in settings():
            number = Annotated[float, Field(ge=s.ge, le=s.le)]
            if s.per_order:
                default = s.default
                fields[s.key] = (number | dict[int, number], Field(
                    default_factory=(lambda d=default: dict(d)) if isinstance(default, dict)
                    else (lambda d=default: d), description=s.description))
            else:
                fields[s.key] = (number, Field(s.default, description=s.description))
        model = create_model("GateSettings", __config__=ConfigDict(extra="forbid"), **fields)
        _models.clear()
        _models[_version] = model
        return model


def import_plugins(modules: Iterable[str]) -> None:
    """Import each plug-in module (importing one registers its metrics); a module already
    imported is not imported again."""
    for module in modules:
        importlib.import_module(module)
