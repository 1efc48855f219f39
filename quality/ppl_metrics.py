"""Perplexity-distribution metrics of a candidate corpus against a reference.

See README.md, "Metrics". Inputs are 1-D float arrays of per-document perplexity.
A document of fewer than 2 tokens has none (null in its score file, NaN in a sample's
array): ``scored`` leaves such documents out, and ``ppl_metrics`` measures only the others.
``ppl_metrics`` gives the candidate's quantiles (``ppl_q01`` .. ``ppl_q99``), the shares of its
documents below the reference's 25th and above its 90th percentile (``ppl_low_frac``,
``ppl_tail_frac``), and the two-sample Kolmogorov-Smirnov statistic and the Wasserstein-1
distance of the log perplexities (``ppl_ks``, ``ppl_w1``, both by scipy.stats), each by its
own function, which the metrics' declarations (``quality/builtin_metrics.py``) call.
``log_bins`` and ``ppl_histogram`` bin perplexities for the warehouse and the plots.
"""

import numpy as np

PPL_QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)


def ppl_low_frac(cand_ppl, ref_ppl) -> float:
    """Share of candidate documents with PPL <= the reference's 25th percentile (human: ~0.25)."""
    return float(np.mean(np.asarray(cand_ppl) <= np.quantile(ref_ppl, 0.25)))


def ppl_tail_frac(cand_ppl, ref_ppl) -> float:
    """Share of candidate documents with PPL >= the reference's 90th percentile (human: ~0.10)."""
    return float(np.mean(np.asarray(cand_ppl) >= np.quantile(ref_ppl, 0.90)))


def ppl_ks(cand_ppl, ref_ppl) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of the log perplexities."""
    # imported here, not with the module: loading a config imports this module (through
    # the metrics' declarations, builtin_metrics) and scipy's import takes most of a second
    # lazy: scipy, loaded only when this runs
    from scipy import stats

    return float(stats.ks_2samp(np.log(cand_ppl), np.log(ref_ppl)).statistic)


def ppl_w1(cand_ppl, ref_ppl) -> float:
    """Wasserstein-1 distance of the log perplexities (on log scale: PPL is multiplicative,
    and the tail would otherwise dominate W1)."""
    # lazy: scipy, loaded only when this runs
    from scipy import stats

    return float(stats.wasserstein_distance(np.log(cand_ppl), np.log(ref_ppl)))


def scored(ppl) -> np.ndarray:
    """The perplexities of the documents that have one (finite and positive)."""
    ppl = np.asarray(ppl, float)
    return ppl[np.isfinite(ppl) & (ppl > 0)]


def ppl_metrics(cand_ppl, ref_ppl) -> dict[str, float]:
    """Every perplexity metric over the documents of each side that have a perplexity;
    none when a side has no such document (the gate then fails them as missing)."""
    cand_ppl, ref_ppl = scored(cand_ppl), scored(ref_ppl)
    if not (len(cand_ppl) and len(ref_ppl)):
        return {}
    out = {f"ppl_q{round(q * 100):02d}": float(v)
           for q, v in zip(PPL_QUANTILES, np.quantile(cand_ppl, PPL_QUANTILES), strict=True)}
    out["ppl_low_frac"] = ppl_low_frac(cand_ppl, ref_ppl)
    out["ppl_tail_frac"] = ppl_tail_frac(cand_ppl, ref_ppl)
    out["ppl_ks"] = ppl_ks(cand_ppl, ref_ppl)
    out["ppl_w1"] = ppl_w1(cand_ppl, ref_ppl)
    return out


def log_bins(all_ppl, num: int = 40) -> np.ndarray:
    """num log-spaced bins (num + 1 edges) spanning every finite positive PPL of all corpora."""
    ppl = np.asarray(all_ppl, float)
    ppl = ppl[np.isfinite(ppl) & (ppl > 0)]
    if ppl.size == 0:
        raise ValueError("no finite positive perplexities to bin")
    low, high = ppl.min(), ppl.max()
    if low == high:  # one distinct value: widen so the bins have width
        low, high = low / 1.01, high * 1.01
    return np.geomspace(low, high, num + 1)


def ppl_histogram(ppl, bins) -> list[dict]:
    """Rows {bin_low, bin_high, documents} (as np.histogram: last bin closed, outside dropped)."""
    counts, edges = np.histogram(np.asarray(ppl, float), bins=bins)
    return [{"bin_low": float(lo), "bin_high": float(hi), "documents": int(c)}
            for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)]

