"""The release gate's thresholds: the bound each gated metric gets, and the gate's verdict.

Bounds are relative to the reference's split-half yardstick Y: Y moved, in the direction
collapse goes, by the larger of a fixed slack and the sampling noise that the stored
bootstrap CIs measure (``GateConfig``, ``thresholds``). Each metric's rule (its direction,
its slack's key, or its fixed bounds) is its declaration's (``metric_registry``; the
built-ins in ``builtin_metrics``): ``edit_rate`` has fixed bounds and is gated for edited
corpora only, ``synthetic_share`` for corpora with a synthetic reference only. Pure
functions of numbers: no warehouse, no GX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from semisynth import metric_registry
from semisynth.config import GateConfig
from semisynth.metric_registry import Fixed, Relative

Bounds = tuple[float | None, float | None]
NO_YARDSTICK = "no split-half yardstick"
BUDGET_MISMATCH = "budget differs from the yardstick's"
VALIDATION_COLUMNS = ("run_id", "corpus", "suite", "expectation", "metric", "observed",
                      "threshold", "success", "validated_at")
Z_95 = 1.959964  # a 95% interval is +- this many standard errors


def has_rule(metric: str) -> bool:
    """Whether ``metric`` is gated relative to the yardstick (``edit_rate``, with its fixed
    bounds, is not)."""
    found = metric_registry.lookup(metric)
    return found is not None and isinstance(found[0].rule, Relative)


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
    ``yardstick``, are left out. A metric with fixed bounds (``Fixed``) is gated by its
    condition: ``edit_rate`` (whether listed or not) for edited corpora only,
    ``synthetic_share`` (at most ``gate.synthetic_share_max``) for corpora with a synthetic
    reference only (``synthetic_share``); one without a condition when listed."""
    noise = noise or {}
    bounds: dict[str, Bounds] = {}
    for metric in metric_names:
        found = metric_registry.lookup(metric)
        if found is None or not isinstance(found[0].rule, Relative) or metric not in yardstick:
            continue
        rule, order = found[0].rule, found[1]
        y = yardstick[metric]
        fixed = rule.fixed_slack(y, gate.setting(rule.slack.key, order))
        # a relative hair of slack: a candidate exactly at the bound (small samples give
        # exact ratios, e.g. 9/368 vs 1.5 * 6/368) must not fail on the last float bit
        slack = max(fixed, noise.get(metric, 0.0)) + 1e-12 * abs(y)
        bounds[metric] = (None, y + slack) if rule.collapse == "up" else (y - slack, None)
    applies = {"edited": edited, "synthetic_reference": synthetic_share}
    for declared in metric_registry.metrics():
        rule = declared.rule
        if not isinstance(rule, Fixed) or declared.per_order:
            continue
        if applies[rule.when] if rule.when else declared.name in metric_names:
            bounds[declared.name] = tuple(None if s is None else gate.setting(s.key)
                                          for s in (rule.low, rule.high))
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
