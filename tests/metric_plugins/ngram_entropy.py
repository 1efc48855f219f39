"""A metric plug-in, the whole of it: the Shannon entropy of the candidate's n-grams.

Collapse concentrates text on fewer, more frequent n-grams, so the entropy falls: the gate
bounds it below, ``ngram_entropy_n >= Y - max(ngram_entropy_max_deficit, noise)``. Listed
in a config's ``metrics.plugins`` (``metric_plugins.ngram_entropy``, with ``tests/`` on the
import path), it is imported when the config loads, and importing it registers it: it is
measured for every n-gram order, stored, gated, reported, and the config's ``gate``
section takes its key. tests/test_metric_plugin.py checks all of that; copy this file to
add a metric (README, "Adding a metric").
"""

import numpy as np

from semisynth.metric_registry import Metric, MetricInputs, Relative, Setting, register


def ngram_entropy(inputs: MetricInputs, n: int) -> float:
    """Entropy in bits of the candidate's distribution of n-grams of order n."""
    _, counts = inputs.table("candidate", n)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


register(Metric(
    "ngram_entropy", ngram_entropy, "ngrams",
    "Shannon entropy (bits) of the candidate's n-gram distribution.",
    Relative("down", Setting("ngram_entropy_max_deficit", 0.5, (
        "ngram_entropy_n >= Y - this (bits)."))),
    per_order=True, summary=True))
