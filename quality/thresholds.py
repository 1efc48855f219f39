"""The release gate's thresholds: the bound each gated metric gets, and the gate's verdict.

Bounds are relative to the reference's split-half yardstick Y: Y moved, in the direction
collapse goes, by the larger of a fixed slack and the sampling noise that the stored
bootstrap CIs measure (``GateConfig``, ``thresholds``). ``edit_rate`` has fixed bounds and
is gated for edited corpora only. Pure functions of numbers: no warehouse, no GX.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from semisynth.config import GateConfig

Bounds = tuple[float | None, float | None]

# How each metric family is gated: the direction collapse moves it ("max": the metric
# grows, bounded above by Y + slack; "min": it shrinks, bounded below by Y - slack) and its
# fixed slack from Y and the order n (distinct_2 belongs to "distinct"). edit_rate has fixed
# bounds and no yardstick.
_RULES = {
    "ppl_low_frac": ("max", lambda y, n, g: g.ppl_low_frac_max_excess),
    "ppl_tail_frac": ("min", lambda y, n, g: g.ppl_tail_frac_max_deficit),
    "ppl_ks": ("max", lambda y, n, g: g.ppl_ks_max_excess),
    "ppl_w1": ("max", lambda y, n, g: g.ppl_w1_max_excess),
    "distinct": ("min", lambda y, n, g: (1 - g.distinct_min_ratio) * y),
    "top1pct_mass": ("max", lambda y, n, g: (g.top1pct_mass_max_ratio - 1) * y),
    "ref_coverage": ("min", lambda y, n, g: (1 - g.coverage_ratio(n)) * y),
    "js": ("max", lambda y, n, g: g.js_max_excess),
}
_NGRAM_METRIC = re.compile(r"(distinct|top1pct_mass|ref_coverage|js)_(\w+)")
NO_YARDSTICK = "no split-half yardstick"
BUDGET_MISMATCH = "budget differs from the yardstick's"
VALIDATION_COLUMNS = ("run_id", "corpus", "suite", "expectation", "metric", "observed",
                      "threshold", "success", "validated_at")
Z_95 = 1.959964  # a 95% interval is +- this many standard errors


def _family(metric: str) -> str | None:
    if metric in _RULES or metric == "edit_rate":
        return metric
    match = _NGRAM_METRIC.fullmatch(metric)
    return match.group(1) if match else None


def has_rule(metric: str) -> bool:
    """Whether ``metric`` is gated relative to the yardstick (``edit_rate``, with its fixed
    bounds, is not)."""
    return _family(metric) in _RULES


def standard_error(ci_low: float | None, ci_high: float | None) -> float:
    """The standard error a stored 95% CI stands for (0.0 without a CI)."""
    if ci_low is None or ci_high is None or math.isnan(ci_low) or math.isnan(ci_high):
        return 0.0
    return (ci_high - ci_low) / (2 * Z_95)


def noise_slack(se_yardstick: float, se_candidate: float, gate: GateConfig) -> float:
    """How far a candidate from the reference's own source can land from Y by chance.

    The candidate's value and Y are each one draw from two samples (candidate vs reference,
    half A vs half B); a stored bootstrap CI resamples one of the two, so each value's
    standard error is about sqrt(2) se and their difference's about 2 se. Under the null
    the two se estimate the same spread; the larger is taken because a proportion's
    bootstrap spread collapses to 0 when the sample holds none (or all) of its documents."""
    return gate.ci_z * 2 * max(se_yardstick, se_candidate)


def thresholds(yardstick: dict[str, float], gate: GateConfig, metric_names: list[str],
               edited: bool, noise: dict[str, float] | None = None,
               synthetic_share: bool = False) -> dict[str, Bounds]:
    """(min, max) per gated metric of ``metric_names`` (None: unbounded on that side).

    Each bound is the split-half value y moved by max(fixed slack, noise[metric]) in the
    direction collapse goes (see ``GateConfig``); ``noise`` is ``noise_slack`` per metric
    with CIs (missing: 0). Metrics without a rule, or whose split-half value is missing from
    ``yardstick``, are left out; ``edit_rate`` is gated (whether listed or not) for edited
    corpora only, ``synthetic_share`` (at most ``gate.synthetic_share_max``) for corpora with
    a synthetic reference only (``synthetic_share``)."""
    noise = noise or {}
    bounds: dict[str, Bounds] = {}
    for metric in metric_names:
        family = _family(metric)
        if family not in _RULES or metric not in yardstick:
            continue
        direction, fixed = _RULES[family]
        match = _NGRAM_METRIC.fullmatch(metric)
        order = int(match.group(2)) if match and match.group(2).isdigit() else None
        y = yardstick[metric]
        # a relative hair of slack: a candidate exactly at the bound (small samples give
        # exact ratios, e.g. 9/368 vs 1.5 * 6/368) must not fail on the last float bit
        slack = max(fixed(y, order, gate), noise.get(metric, 0.0)) + 1e-12 * abs(y)
        bounds[metric] = (None, y + slack) if direction == "max" else (y - slack, None)
    if edited:
        bounds["edit_rate"] = (gate.edit_rate_min, gate.edit_rate_max)
    if synthetic_share:
        bounds["synthetic_share"] = (None, gate.synthetic_share_max)
    return bounds


def threshold_text(bounds: Bounds) -> str:
    low, high = bounds
    if low is not None and high is not None:
        return f"[{low:.4g}, {high:.4g}]"
    return f">= {low:.4g}" if high is None else f"<= {high:.4g}"


def expectation_name(metric: str, bounds: Bounds) -> str:
    both = bounds[0] is not None and bounds[1] is not None
    return f"{metric} {'in ' if both else ''}{threshold_text(bounds)}"


@dataclass
class GateResult:
    corpus: str
    suite: str
    success: bool
    rows: list[dict]  # one per expectation, columns of the `validations` table

    def failures(self) -> list[dict]:
        return [r for r in self.rows if not r["success"]]

    def summary(self) -> str:
        lines = [f"{self.corpus}: {r['metric']}: {failure_reason(r)}" for r in self.failures()]
        return "\n".join(lines) or f"{self.corpus}: all {len(self.rows)} expectations passed"


def failure_reason(row: dict) -> str:
    """Why a failed expectation (a ``validations`` row) failed, in words."""
    if row["metric"] == "*":
        return f"no gated metrics in the warehouse for run {row['run_id']}"
    if row["threshold"] == NO_YARDSTICK:
        return f"no split-half value of the reference in run {row['run_id']} to set a threshold"
    if row["threshold"].startswith(BUDGET_MISMATCH):
        return f"not comparable, {row['threshold']} (corpus vs yardstick)"
    if row["observed"] is None:
        return f"missing from the warehouse for run {row['run_id']} (want {row['threshold']})"
    return f"observed {row['observed']:.4g}, want {row['threshold']}"
