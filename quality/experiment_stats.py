"""The collapse experiment's statistics: held-out perplexity per arm beside the arm's gate
metrics, and whether the paper's shape holds. The experiment flow's markdown summary and the
run report's experiment section are written from them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from semisynth.quality.formatting import missing, number
from semisynth.quality.plots import PAPER_GPT2_PPL
from semisynth.warehouse import report_data

EXPERIMENT_GATE_METRICS = ("ppl_low_frac", "ppl_ks", "distinct_2", "ref_coverage_2", "js_2",
                           "edit_rate")


def collapse_shape(summary: pd.DataFrame, corpus: str = "heldout-human") -> list[tuple[str, bool]]:
    """The paper's shape, checked on the mixture arms' held-out perplexity: the all-synthetic
    arm above the human-only arm with 95% intervals apart, and the mean not falling as the
    synthetic share rises (a dip within the intervals allowed). [(claim, holds)]."""
    rows = summary[(summary.eval_corpus == corpus) & summary.edit_threshold.isna()
                   & summary.selection.isna()].sort_values("synthetic_share")
    human, full = rows[rows.synthetic_share == 0.0], rows[rows.synthetic_share == 1.0]
    checks = []
    if len(human) and len(full):
        h, s = human.iloc[0], full.iloc[0]
        apart = bool(s.ci_low > h.ci_high) if not (missing(s.ci_low) or missing(h.ci_high)) \
            else bool(s.mean_ppl > h.mean_ppl)
        checks.append((f"{s.arm} ({s.mean_ppl:.4g}) above {h.arm} ({h.mean_ppl:.4g}), "
                       "95% intervals apart", apart))
    rising = True
    for (_, a), (_, b) in zip(rows.iterrows(), rows.iloc[1:].iterrows(), strict=False):
        if b.mean_ppl < a.mean_ppl and not (b.ci_high >= a.ci_low):
            rising = False
    if len(rows) > 1:
        checks.append(("mean PPL does not fall as the synthetic share rises "
                       "(any dip within the intervals)", rising))
    return checks


def experiment_table(wh: Path, run_id: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the run's experiment, as text: per arm its held-out PPL (mean
    [95% CI] over seeds) on each held-out corpus, relative to the human-only arm beside the
    paper's GPT-2 curve, and its training corpus's gate metrics against the human pool."""
    summary = report_data.experiment_summary(wh, run_id)
    if summary.empty:
        return [], []
    gate = report_data.vs_reference_values(wh, run_id)
    corpora = list(dict.fromkeys(summary.eval_corpus))
    human = summary[(summary.eval_corpus == "heldout-human") & summary.edit_threshold.isna()
                    & summary.selection.isna() & (summary.synthetic_share == 0.0)]
    base = human.mean_ppl.iloc[0] if len(human) else None
    headers = (["arm", "synthetic share", "edit", "selection", "seeds"]
               + [f"{c} PPL [95% CI]" for c in corpora]
               + ["relative (human)", "paper GPT-2 (relative)"] + list(EXPERIMENT_GATE_METRICS))
    rows = []
    first = summary[summary.eval_corpus == corpora[0]]
    for r in first.itertuples():
        cells = [r.arm, f"{r.synthetic_share:g}", number(r.edit_threshold),
                 "" if missing(r.selection) else r.selection, str(r.seeds)]
        for c in corpora:
            hit = summary[(summary.eval_corpus == c) & (summary.arm == r.arm)].iloc[0]
            ci = "" if missing(hit.ci_low) else f" [{hit.ci_low:.4g}, {hit.ci_high:.4g}]"
            cells.append(f"{hit.mean_ppl:.4g}{ci}")
        mine = summary[(summary.eval_corpus == "heldout-human") & (summary.arm == r.arm)]
        cells.append(f"{mine.mean_ppl.iloc[0] / base:.3f}" if base and len(mine) else "")
        paper = PAPER_GPT2_PPL.get(r.synthetic_share) if missing(r.edit_threshold) \
            and missing(r.selection) else None
        cells.append(f"{paper / PAPER_GPT2_PPL[0.0]:.3f}" if paper else "")
        cells += [number(gate.get((r.arm, m))) for m in EXPERIMENT_GATE_METRICS]
        rows.append(cells)
    return headers, rows


def experiment_markdown(wh: Path, run_id: str, name: str, train_tokens: int) -> str:
    """The experiment flow run's markdown summary artifact."""
    headers, rows = experiment_table(wh, run_id)
    summary = report_data.experiment_summary(wh, run_id)
    lines = [f"# Collapse experiment `{name}`, run `{run_id}`", "",
             f"Every arm trains on exactly {train_tokens} tokens; perplexity per token on the "
             "held-out documents, mean over seeds with a 95% Student-t interval; the gate "
             "metrics are the arm's training corpus against the human pool.", "",
             "| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += ["", "## The paper's shape", ""]
    lines += [f"- {'yes' if ok else 'NO'}: {claim}" for claim, ok in collapse_shape(summary)]
    return "\n".join(lines)
