"""The built-in metrics, declared (``metric_registry.Metric``) in the order the report and
the summary show them; ``metric_registry`` imports this module before any other metric
registers. The computations are those of ``ppl_metrics`` and ``ngram_metrics``; the
settings' defaults come from ``benchmarks/calibrate_gate.py`` on the demo corpora at
12k-token budgets (``GateConfig``; benchmarks/README.md, "Gate calibration").
"""

from __future__ import annotations

import numpy as np

from semisynth.metric_registry import (
    Fixed,
    Metric,
    MetricInputs,
    Relative,
    Setting,
    register,
)
from semisynth.quality.bootstrap import bootstrap_ci, coverage_of_covered, covered_types_by_doc
from semisynth.quality.ngram_metrics import (
    coverage_of_types,
    distinct_of_table,
    frequent_ref_types,
    js_of_tables,
    top1pct_mass,
)
from semisynth.quality.ppl_metrics import PPL_QUANTILES, ppl_ks, ppl_low_frac, ppl_tail_frac, ppl_w1


def _ppl_ci(fn):
    def ci(inputs: MetricInputs, n: int | None) -> tuple[float, float]:
        return bootstrap_ci(fn, inputs.cand_ppl, inputs.ref_ppl, inputs.bootstrap, inputs.seed)
    return ci


def _quantile(q: float):
    def compute(inputs: MetricInputs, n: int | None) -> float:
        return float(np.quantile(inputs.cand_ppl, q))
    return compute


for _q in PPL_QUANTILES:
    register(Metric(f"ppl_q{round(_q * 100):02d}", _quantile(_q), "perplexity",
                    f"The candidate's {round(_q * 100)}th percentile of document perplexity.",
                    summary=_q == 0.50))

register(Metric(
    "ppl_low_frac", lambda i, n: ppl_low_frac(i.cand_ppl, i.ref_ppl), "perplexity",
    "Share of candidate documents with PPL <= the reference's 25th percentile (human: ~0.25).",
    Relative("up", Setting("ppl_low_frac_max_excess", 0.15, (
        "ppl_low_frac <= Y + max(this, noise). Human Y is about 0.25; a corpus with a "
        "quarter of its documents from a collapsed source (all below the 25th percentile) "
        "reaches about 0.44."))),
    ci=_ppl_ci(ppl_low_frac), summary=True))

register(Metric(
    "ppl_tail_frac", lambda i, n: ppl_tail_frac(i.cand_ppl, i.ref_ppl), "perplexity",
    "Share of candidate documents with PPL >= the reference's 90th percentile (human: ~0.10).",
    Relative("down", Setting("ppl_tail_frac_max_deficit", 0.08, (
        "ppl_tail_frac >= Y - max(this, noise). Human Y is about 0.10, so at most this asks "
        "for a non-empty tail; with few documents the noise term makes it vacuous (24 human "
        "documents have none above the 90th percentile 8% of the time)."))),
    ci=_ppl_ci(ppl_tail_frac), summary=True))

register(Metric(
    "ppl_ks", lambda i, n: ppl_ks(i.cand_ppl, i.ref_ppl), "perplexity",
    "Kolmogorov-Smirnov statistic of the two samples' log perplexities.",
    Relative("up", Setting("ppl_ks_max_excess", 0.30, (
        "ppl_ks <= Y + this. KS of 24 against 24 documents moves in steps of 1/24 and "
        "differed from Y by up to 0.21 between human samples."))),
    summary=True))

register(Metric(
    "ppl_w1", lambda i, n: ppl_w1(i.cand_ppl, i.ref_ppl), "perplexity",
    "Wasserstein-1 distance of the two samples' log perplexities.",
    Relative("up", Setting("ppl_w1_max_excess", 0.35, (
        "ppl_w1 <= Y + this (log-PPL units). Human samples: within 0.19 of Y; the 25% "
        "mixture: 0.10 to 1.05 above it, the 50% mixture at least 0.49.")))))

register(Metric(
    "distinct", lambda i, n: distinct_of_table(*i.table("candidate", n)), "ngrams",
    "Distinct n-grams of the candidate / its n-grams.",
    Relative("down", Setting("distinct_min_ratio", 0.85, (
        "distinct_n >= Y * this. Human samples: at least 0.90 Y (n = 1), 0.96 Y (n = 2), "
        "0.98 Y (n = 3); the 50% mixture: 0.66 Y to 0.94 Y.")), scale="ratio"),
    per_order=True, summary=True))

register(Metric(
    "top1pct_mass", lambda i, n: top1pct_mass(i.table("candidate", n)[1]), "ngrams",
    "Share of the candidate's n-gram occurrences held by its most frequent 1% of types.",
    Relative("up", Setting("top1pct_mass_max_ratio", 1.5, (
        "top1pct_mass_n <= Y * this. Human samples: at most 1.23 Y (n = 3, the noisiest: the "
        "top 1% of trigram types is about a hundred types); the 50% mixture: at least 1.51 Y "
        "(n = 3).")), scale="ratio"),
    per_order=True, summary=True))


def _ref_coverage(inputs: MetricInputs, n: int | None) -> float:
    return coverage_of_types(inputs.table("candidate", n)[0],
                             frequent_ref_types(*inputs.table("reference", n)))


def _ref_coverage_ci(inputs: MetricInputs, n: int | None) -> tuple[float, float]:
    # per document, in memory (the budget's tokens): a resample is a multiset of documents
    ref_types = frequent_ref_types(*inputs.table("reference", n))
    per_doc, n_types = covered_types_by_doc(inputs.candidate_tokens(), ref_types, n)
    # median-shifted (see bootstrap_ci): plain percentiles would sit below the estimate
    return bootstrap_ci(coverage_of_covered, per_doc, n_types, inputs.bootstrap, inputs.seed,
                        debias=True)


register(Metric(
    "ref_coverage", _ref_coverage, "ngrams",
    "Share of the reference's n-gram types seen at least twice that the candidate has.",
    Relative("down", Setting("ref_coverage_min_ratio", {1: 0.85, 2: 0.85, 3: 0.5}, (
        "ref_coverage_n >= Y * this, per n-gram order (one number: every order; an "
        "order not listed: the lowest ratio given). Coverage gets noisier with n: few "
        "reference trigrams occur twice in a small budget and which ones depends on a few "
        "documents; human samples reached 0.94 Y (n = 1), 0.82 Y (n = 2, widened by its "
        "CI) and 0.59 Y (n = 3)."), per_order=True), scale="ratio"),
    per_order=True, ci=_ref_coverage_ci, ci_orders=(2,), summary=True))

register(Metric(
    "js", lambda i, n: js_of_tables(*i.table("candidate", n), *i.table("reference", n),
                                    i.buckets), "ngrams",
    "Jensen-Shannon divergence (base 2) of the two n-gram distributions, hashed into "
    "metrics.js_buckets buckets.",
    Relative("up", Setting("js_max_excess", 0.10, (
        "js_n <= Y + this. At small budgets JS of hashed n-grams saturates near its maximum "
        "for any pair of samples (the bound can exceed 1 and then never fails)."))),
    per_order=True, summary=True))

# Measured by quality/measure.py, outside the comparison: the edit rate from the edit
# counts of the edit source's scores, the share from the estimator of quality/share.py.
register(Metric(
    "edit_rate", None, None,
    "Edited / scored tokens of the corpus an edited candidate was edited from.",
    # ToEdit changes few tokens: only p > 0.99 positions are redrawn, and the top token
    # usually wins the redraw again (the demo measures about 0.03%).
    Fixed(low=Setting("edit_rate_min", 0.00001, le=1),
          high=Setting("edit_rate_max", 0.25, le=1), when="edited"),
    summary=True))

register(Metric(
    "synthetic_share", None, None,
    "Estimated share of model-written documents (quality/share.py), for candidates with a "
    "synthetic_reference.",
    Fixed(high=Setting("synthetic_share_max", 0.25, (
        "synthetic_share <= this, for corpora with a synthetic_reference: the estimated share "
        "of model-written documents (quality/share.py). The paper's damage starts at 25% "
        "synthetic (GPT-2: avg PPL 20.99 human, 22.06 at 25%, 23.48 at 50%). The calibration "
        "(benchmarks/synthetic_share.py: max error 0.018 at 10% and 0.006 at 25% on 40 "
        "documents) keeps 10% clearly below it and 50% clearly above."), le=1),
        when="synthetic_reference"),
    summary=True))
