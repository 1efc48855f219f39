"""Pictures of a run: perplexity distributions and n-gram rank-frequency curves.

PNG files in the run folder ``<data root>/runs/<run_id>/``; the flow attaches them to its
Prefect flow run as markdown artifacts (the image inlined as a data URI: Prefect's image
artifact only takes a URL, and the UI cannot load ``file://`` ones), and ``semisynth
report`` inlines them the same way. Matplotlib draws through its Agg canvas on
``Figure`` objects (no pyplot, no global state), so it is safe in a worker thread.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semisynth.quality.ppl_metrics import log_bins

REFERENCE_STYLE = {"color": "black", "linewidth": 2.2}
QUARTILES = (0.25, 0.50, 0.75)
CURVE_POINTS = 400  # points per rank-frequency curve (log-spaced ranks); keeps PNGs small


def run_folder(root: Path, run_id: str) -> Path:
    """The folder of a run's files (plots, report) under the data root."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ValueError(f"not a run id: {run_id!r}")
    return Path(root) / "runs" / run_id


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _figure(width: float, height: float):
    # lazy: matplotlib, loaded only when this runs
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def ppl_distribution_png(path: Path, reference: str, ppl: Mapping[str, np.ndarray],
                         title: str | None = None) -> Path:
    """Per-document perplexity of the reference and each candidate, overlaid on one log-x
    axis (share of each corpus's documents per log-spaced bin); dashed vertical lines at
    the reference's quartiles."""
    if reference not in ppl:
        raise ValueError(f"no perplexities for the reference {reference!r}")
    clean = {name: np.asarray(p, float)[np.isfinite(p) & (np.asarray(p, float) > 0)]
             for name, p in ppl.items()}
    clean = {name: p for name, p in clean.items() if p.size}
    bins = log_bins(np.concatenate(list(clean.values())), num=40)
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    ordered = [reference] + [n for n in clean if n != reference]
    for i, name in enumerate(ordered):
        values = clean.get(name)
        if values is None:
            continue
        style = REFERENCE_STYLE if name == reference else {"color": f"C{i - 1}", "linewidth": 1.6}
        label = f"{name} (reference)" if name == reference else name
        ax.hist(values, bins=bins, weights=np.full(values.size, 1.0 / values.size),
                histtype="step", label=f"{label}, {values.size} docs", **style)
    quartiles = np.quantile(clean[reference], QUARTILES)
    label = "reference quartiles (" + ", ".join(
        f"q{round(q * 100)} = {x:.3g}" for q, x in zip(QUARTILES, quartiles, strict=True)) + ")"
    for i, x in enumerate(quartiles):
        ax.axvline(x, color="black", linestyle="--", linewidth=1, alpha=0.7,
                   label=label if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("document perplexity under the prior (log scale)")
    ax.set_ylabel("share of the corpus's documents")
    ax.set_title(title or f"Perplexity distributions vs reference {reference}")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, which="both", alpha=0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def rank_frequency_curve(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, shares of all n-gram occurrences) of n-gram types with these counts, most
    frequent first, at up to CURVE_POINTS log-spaced ranks (the first and the last rank
    always included)."""
    if counts.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, float)
    shares = np.sort(counts)[::-1] / counts.sum()
    ranks = np.unique(np.geomspace(1, counts.size, min(CURVE_POINTS, counts.size)).round()
                      .astype(np.int64))
    return ranks, shares[ranks - 1]


def rank_frequency_png(path: Path, curves: Mapping[str, Mapping[int, tuple]],
                       references: Sequence[str] = (), title: str | None = None) -> Path:
    """Rank-frequency (Zipf) curves, log-log, one panel per n-gram order, one curve per
    corpus (references drawn thick and black-ish), from each corpus's curves
    ``{n: rank_frequency_curve(counts)}``. Frequencies are shares of the corpus's n-gram
    occurrences, so corpora of different sizes compare."""
    orders = sorted({n for corpus_curves in curves.values() for n in corpus_curves})
    fig = _figure(4.2 * len(orders) + 0.6, 4.6)
    axes = fig.subplots(1, len(orders), squeeze=False)[0]
    for ax, n in zip(axes, orders, strict=True):
        for i, (name, corpus_curves) in enumerate(curves.items()):
            ranks, shares = corpus_curves[n]
            if ranks.size == 0:
                continue
            is_ref = name in references
            style = {"color": "black" if i == 0 and is_ref else f"C{i}",
                     "linewidth": 2.2 if is_ref else 1.4}
            ax.plot(ranks, shares, label=name + (" (reference)" if is_ref else ""), **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{n}-grams")
        ax.set_xlabel("rank")
        ax.grid(True, which="both", alpha=0.2)
    axes[0].set_ylabel("share of n-gram occurrences")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "n-gram rank-frequency curves (token ids of the prior)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def write_run_plots(folder: Path, ppl: Mapping[str, np.ndarray], references: Mapping[str, str],
                    curves: Mapping[str, Mapping[int, tuple]]) -> list[Path]:
    """The run's PNGs in ``folder``: ``ppl-<reference>.png`` (one per reference, with the
    candidates measured against it) and ``ngram-rank-frequency.png``.

    ``ppl`` maps corpus names to per-document perplexities; ``references`` maps each
    candidate to its reference; ``curves`` holds each corpus's rank-frequency curves
    (``{n: rank_frequency_curve(counts)}``)."""
    folder = Path(folder)
    paths = []
    refs = sorted(set(references.values()))
    for ref in refs:
        names = [ref] + [c for c, r in references.items() if r == ref and c != ref]
        paths.append(ppl_distribution_png(
            folder / f"ppl-{_safe(ref)}.png", ref, {n: ppl[n] for n in names if n in ppl}))
    ordered = [r for r in refs if r in curves] + [n for n in curves if n not in refs]
    paths.append(rank_frequency_png(folder / "ngram-rank-frequency.png",
                                    {n: curves[n] for n in ordered}, refs))
    return paths


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def artifact_key(png: Path) -> str:
    """A Prefect artifact key for a plot (lowercase letters, digits and dashes only)."""
    return "semisynth-" + re.sub(r"[^a-z0-9]+", "-", Path(png).stem.lower()).strip("-")


def image_markdown(png: Path, caption: str | None = None) -> str:
    """Markdown that shows the PNG inline (a data URI), with its file path under it."""
    caption = caption or Path(png).stem
    return f"![{caption}]({data_uri(png)})\n\n`{png}`"


# The paper's first experiment (ToEdit, arXiv 2412.14689): GPT-2 124M trained on human text
# with 0-100% of it replaced by synthetic text, average perplexity on held-out human text.
PAPER_GPT2_PPL = {0.0: 20.99, 0.25: 22.06, 0.5: 23.48, 0.75: 27.60, 1.0: 51.93}
EXPERIMENT_PNG = "experiment-ppl.png"


def relative_paper_curve() -> tuple[np.ndarray, np.ndarray]:
    """(synthetic shares, the paper's PPL / its human-only PPL)."""
    shares = np.array(sorted(PAPER_GPT2_PPL))
    return shares, np.array([PAPER_GPT2_PPL[s] for s in shares]) / PAPER_GPT2_PPL[0.0]


def experiment_png(path: Path, summary, title: str | None = None) -> Path:
    """Held-out perplexity against synthetic share, one panel per held-out corpus, plus the
    human panel relative to the human arm beside the paper's relative curve. ``summary``:
    rows of ``experiment_summary`` (a DataFrame); mixture arms are the line (mean over seeds,
    95% interval bars), edited and DSIR arms are points at their share."""
    corpora = [c for c in ("heldout-human", "heldout-synthetic") if c in set(summary.eval_corpus)]
    fig = _figure(5.2 * (len(corpora) + 1), 4.6)
    axes = fig.subplots(1, len(corpora) + 1, squeeze=False)[0]

    def errors(rows):
        low = (rows.mean_ppl - rows.ci_low).fillna(0).clip(lower=0)
        high = (rows.ci_high - rows.mean_ppl).fillna(0).clip(lower=0)
        return np.vstack([low, high])

    for ax, corpus in zip(axes, corpora, strict=False):
        rows = summary[summary.eval_corpus == corpus]
        mix = rows[rows.edit_threshold.isna() & rows.selection.isna()].sort_values("synthetic_share")
        ax.errorbar(mix.synthetic_share, mix.mean_ppl, yerr=errors(mix), marker="o", capsize=4,
                    color="black", label="human + synthetic mixtures")
        others = rows[rows.edit_threshold.notna() | rows.selection.notna()]
        for i, r in enumerate(others.itertuples()):
            ax.errorbar([r.synthetic_share], [r.mean_ppl], yerr=errors(others.iloc[[i]]),
                        marker="sD^v"[i % 4], linestyle="none", capsize=4, color=f"C{i}",
                        label=r.arm)
        ax.set_xlabel("synthetic share of the training tokens")
        ax.set_ylabel("per-token perplexity (mean over seeds, 95% CI)")
        ax.set_title(f"{corpus}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    human = summary[(summary.eval_corpus == "heldout-human") & summary.edit_threshold.isna()
                    & summary.selection.isna()].sort_values("synthetic_share")
    base = human[human.synthetic_share == 0.0].mean_ppl
    if len(base):
        ax.errorbar(human.synthetic_share, human.mean_ppl / base.iloc[0],
                    yerr=errors(human) / base.iloc[0], marker="o", capsize=4, color="black",
                    label="this experiment")
    shares, relative = relative_paper_curve()
    ax.plot(shares, relative, marker="s", linestyle="--", color="C3",
            label="paper: GPT-2 124M (20.99 at 0%)")
    ax.set_xlabel("synthetic share of the training tokens")
    ax.set_ylabel("held-out human PPL / human-only PPL")
    ax.set_title("relative to the human-only arm")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title or "Model collapse: held-out perplexity against the synthetic share")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
