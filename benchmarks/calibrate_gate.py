"""Calibrate the release gate (GX suite ``coverage``) on the demo corpora.

    .venv/bin/python benchmarks/calibrate_gate.py [DATA_ROOT] [--splits 20] [--config ...]

Reads the demo's scores (``make run`` writes them under DATA_ROOT, default ./var) and
never writes there. For each of ``--splits`` random halvings of the human corpus into
A and B, the reference is half B and the candidates are

- half A itself (a human split-half: must pass),
- the ToEdit-edited copies of half A's documents (must pass),
- the pure synthetic corpus (must fail),
- mixtures of half A and the synthetic corpus at 10%, 25%, 50% and 75% synthetic
  documents (drawn as the flow draws a ``mix`` corpus; the gate must trip at 50% or less).

Candidate and reference never share a document. Every comparison is measured by the code
the flow runs (``semisynth.quality.measure.measure``: one equal token budget for the run,
bootstrap CIs, B's own split-half yardstick, which is all the gate has in production),
stored in a DuckDB warehouse in a work folder and validated by the real gate
(``gate.validate_corpus``: Great Expectations on that warehouse). With the reference only
half the corpus, the budget is half the demo's (12k tokens, 24 documents a side): the
hardest setting the demo's corpora allow. The demo's own comparisons (candidates against
the whole human corpus, as ``make run`` measures them) are gated too.

Prints a table per part and one JSON line; exits 1 when a requirement is not met.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from semisynth.config import Config, load_config
from semisynth.quality import gate, metric_registry
from semisynth.quality.measure import Scored, measure
from semisynth.quality.thresholds import GateResult
from semisynth.tasks.corpora import mix_selection
from semisynth.tasks.prior import resolve_model
from semisynth.tasks.score import read_scores, score_key, token_arrays
from semisynth.warehouse import db

REPO = Path(__file__).resolve().parents[1]
SHARES = (0.10, 0.25, 0.50, 0.75)
COLUMNS = ["id", "token_ids", "ppl", "scored_tokens", "edited_tokens"]


class Missing(RuntimeError):
    """The demo's scores are not there (exit 2)."""


class Corpus:
    """A scored corpus, document by document (score files in shard order)."""

    def __init__(self, name: str, paths: list[Path]):
        table = read_scores(paths, COLUMNS)
        self.name = name
        self.ids = table.column("id").to_pylist()
        self.docs = token_arrays(table)
        self.ppl = table.column("ppl").to_numpy().astype(float)
        # per document, not totals as in measure.Scored: a subset's edit rate needs them
        self.scored = table.column("scored_tokens").to_numpy()
        self.edited = table.column("edited_tokens").to_numpy()

    def __len__(self) -> int:
        return len(self.docs)

    def take(self, rows) -> Scored:
        rows = np.asarray(rows, dtype=np.int64)
        return Scored([self.docs[i] for i in rows], self.ppl[rows],
                      int(self.scored[rows].sum()), int(self.edited[rows].sum()))


def load_corpora(root: Path, cfg: Config, names: list[str]) -> tuple[dict[str, Corpus], str]:
    """The scored corpora of the demo run under ``root`` (read only), and the score key."""
    wh = db.warehouse_path(root)
    if not wh.exists():
        raise Missing(f"no warehouse at {wh}")
    model_id = resolve_model(cfg.prior.model, root)[1]  # the demo has fetched the prior
    key = score_key(model_id, cfg.prior, cfg.edit, cfg.seed)
    shards = db.query(wh, "SELECT corpus, shard_hash, path FROM shards ORDER BY corpus, path")
    corpora = {}
    for name in names:
        hashes = shards.loc[shards["corpus"] == name, "shard_hash"].tolist()
        paths = [root / "scores" / key / f"{h}.parquet" for h in hashes]
        if not paths or not all(p.exists() for p in paths):
            raise Missing(f"no scores of corpus {name!r} under {root / 'scores' / key}")
        corpora[name] = Corpus(name, paths)
        if len(set(corpora[name].ids)) != len(corpora[name]):
            raise Missing(f"corpus {name!r} has shards of more than one ingest in {wh}")
    return corpora, key


def split_seeds(seed: int, split: int) -> tuple[int, int, int]:
    """Independent seeds of one split: the halving, the metrics, the mixtures."""
    a, b, c = np.random.SeedSequence([seed, split]).generate_state(3)
    return int(a), int(b), int(c)


def split_cases(human: Corpus, edited: Corpus, synthetic: Corpus, seed: int, split: int,
                shares=SHARES) -> tuple[dict[str, Scored], int]:
    """Candidates and reference ("human_B") of one split, and the seed for its metrics."""
    halving, metric_seed, mix_seed = split_seeds(seed, split)
    order = np.random.default_rng(halving).permutation(len(human))
    half_a, half_b = np.sort(order[: len(human) // 2]), np.sort(order[len(human) // 2:])
    where = {doc_id: i for i, doc_id in enumerate(edited.ids)}
    corpora = {
        "human_B": human.take(half_b),
        "human_A": human.take(half_a),
        "edited_A": edited.take([where[human.ids[i]] for i in half_a]),
        "synthetic": synthetic.take(np.arange(len(synthetic))),
    }
    for share in shares:
        picks = mix_selection({"human": len(half_a), "synthetic": len(synthetic)},
                              {"human": 1 - share, "synthetic": share}, mix_seed)
        part_h, part_s = human.take(half_a[picks["human"]]), synthetic.take(picks["synthetic"])
        corpora[mix_name(share)] = Scored(part_h.docs + part_s.docs,
                                          np.concatenate([part_h.ppl, part_s.ppl]))
    return corpora, metric_seed


def mix_name(share: float) -> str:
    return f"mix{round(share * 100):02d}"


def validate(wh: Path, gx_root: Path, run_id: str, rows: list[dict], pairs: dict[str, str],
             edited_from: dict[str, str], gate_cfg) -> dict[str, GateResult]:
    db.insert(wh, "metrics", [{**r, "run_id": run_id} for r in rows])
    return {c: gate.validate_corpus(wh, gx_root, run_id, c, ref, gate_cfg, c in edited_from)
            for c, ref in pairs.items()}


def table(headers: list[str], body: list[list], numeric: set[int] = frozenset()) -> str:
    """A markdown table; columns whose index is in ``numeric`` are right-aligned."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def failing(results: list[GateResult]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        for f in r.failures():
            counts[f["metric"]] = counts.get(f["metric"], 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{m} {k}" for m, k in top) or "-"


def closest(results: list[GateResult]) -> dict[str, tuple[float, str]]:
    """Per metric, the observed value nearest its bound (or furthest past it) and the bound."""
    out: dict[str, tuple[float, float, str]] = {}
    for r in results:
        for row in r.rows:
            text, value = row["threshold"], row["observed"]
            if value is None or not text.startswith(("<=", ">=")):
                continue
            bound = float(text[3:])
            room = bound - value if text.startswith("<=") else value - bound
            if row["metric"] not in out or room < out[row["metric"]][0]:
                out[row["metric"]] = (room, value, text)
    return {m: (value, text) for m, (_, value, text) in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", nargs="?", default="var",
                        help="the demo's data root, read only (default: ./var)")
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--first-split", type=int, default=0,
                        help="split numbers first..first+splits-1 (each seeds its own halving)")
    parser.add_argument("--human", default="brown")
    parser.add_argument("--edited", default="brown_toedit")
    parser.add_argument("--synthetic", default="synthetic")
    parser.add_argument("--mix", default="mix50", help="the demo's mixture corpus")
    parser.add_argument("--work", default=None,
                        help="folder for the benchmark's own warehouse and GX files "
                             "(default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)

    root = Path(args.data_root).expanduser().resolve()
    cfg = load_config(args.config)
    names = [args.human, args.edited, args.synthetic, args.mix]
    try:
        corpora, key = load_corpora(root, cfg, names)
    except Missing as exc:
        print(f"error: {exc}.\nThe benchmark reads the demo's scores: run `make run` "
              f"(semisynth demo) first, or pass the data root it wrote.", file=sys.stderr)
        return 2
    human, edited, synthetic = (corpora[n] for n in names[:3])

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="calibrate-gate-"))
    work = work.resolve()
    if work == root or root in work.parents:
        print(f"error: --work must be outside the data root {root}", file=sys.stderr)
        return 2
    wh, gx_root = db.init(work / "warehouse.duckdb"), work / "gx"
    started = time.perf_counter()
    print(f"# gate calibration: {len(human)} human, {len(edited)} edited, {len(synthetic)} "
          f"synthetic documents (scores {key}); {args.splits} splits; work folder {work}",
          file=sys.stderr)

    cases = ["human_A", "edited_A", "synthetic", *(mix_name(s) for s in SHARES)]
    results: dict[str, list[GateResult]] = {c: [] for c in cases}
    budgets = set()
    for split in range(args.first_split, args.first_split + args.splits):
        scored, metric_seed = split_cases(human, edited, synthetic, cfg.seed, split)
        pairs = {c: "human_B" for c in cases}
        measured = measure(scored, pairs, cfg.metrics, metric_seed,
                           edited_from={"edited_A": "human_A"})
        rows, budget = measured.rows, measured.budget
        budgets.add(budget)
        verdicts = validate(wh, gx_root, f"split-{split:02d}", rows, pairs,
                            {"edited_A": "human_A"}, cfg.gate)
        for c, v in verdicts.items():
            results[c].append(v)
        print(f"  split {split}: budget {budget}, "
              + " ".join(f"{c}={'pass' if v.success else 'FAIL'}" for c, v in verdicts.items())
              + f" ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    # The demo's own comparisons: every candidate against the whole human corpus.
    demo_pairs = {args.edited: args.human, args.synthetic: args.human, args.mix: args.human}
    demo_scored = {n: c.take(np.arange(len(c))) for n, c in corpora.items()}
    demo_measured = measure(demo_scored, demo_pairs, cfg.metrics, cfg.seed,
                            edited_from={args.edited: args.human})
    demo_rows, demo_budget = demo_measured.rows, demo_measured.budget
    demo = validate(wh, gx_root, "demo", demo_rows, demo_pairs, {args.edited: args.human},
                    cfg.gate)

    n = args.splits
    passed = {c: sum(v.success for v in results[c]) for c in cases}
    fails_at = {s: n - passed[mix_name(s)] for s in SHARES}
    # The gate trips at the smallest share from which on every split fails.
    trip = next((s for i, s in enumerate(SHARES) if all(fails_at[t] == n for t in SHARES[i:])),
                None)
    checks = {
        "human split-halves all pass": passed["human_A"] == n,
        "edited corpus passes": passed["edited_A"] == n,
        "synthetic corpus fails": passed["synthetic"] == 0,
        "trips at 50% or less": trip is not None and trip <= 0.5,
    }
    labels = {"human_A": ("human half A (split-half)", "pass"),
              "edited_A": ("ToEdit-edited half A", "pass"),
              "synthetic": ("pure synthetic", "fail")}
    labels |= {mix_name(s): (f"mixture, {round(s * 100)}% synthetic", "fail" if s >= 0.5 else "-")
               for s in SHARES}
    body = [[labels[c][0], labels[c][1], f"{passed[c]}/{n}", f"{n - passed[c]}/{n}",
             failing(results[c])] for c in cases]
    print(f"\nCandidates vs human half B, {n} random splits, budget "
          f"{'/'.join(map(str, sorted(budgets)))} tokens a side; yardstick: half B's own "
          f"split-halves.\n")
    print(table(["candidate", "expected", "passed", "failed",
                 "failing expectations (splits)"], body, {2, 3}))
    trip_text = f"{round(trip * 100)}% synthetic" if trip is not None else "not within 75%"
    print(f"\nThe gate trips at {trip_text} (every split fails from that share on); "
          f"failures per share: " + ", ".join(f"{round(s * 100)}%: {fails_at[s]}/{n}"
                                              for s in SHARES) + ".")

    near_h = closest(results["human_A"] + results["edited_A"])
    near_50 = closest(results[mix_name(0.5)])
    fail_50 = {m: sum(any(f["metric"] == m for f in v.failures()) for v in results["mix50"])
               for m in near_h}
    metrics = sorted(near_h, key=metric_registry.report_position)  # as the report orders them
    print("\nPer expectation: the human or edited candidate closest to its bound over all "
          "splits (observed, bound), and the 50% mixtures it fails.\n")
    print(table(["expectation", "human/edited, closest", "50% mixture: fails",
                 "50% mixture, closest"],
                [[m, f"{near_h[m][0]:.4g} ({near_h[m][1]})", f"{fail_50[m]}/{n}",
                  f"{near_50[m][0]:.4g} ({near_50[m][1]})"] for m in metrics], {2}))

    print(f"\nThe demo's comparisons (candidates vs the whole human corpus, budget "
          f"{demo_budget} tokens):\n")
    print(table(["corpus", "verdict", "failing expectations (observed)"],
                [[c, "pass" if v.success else "FAIL",
                  f"{len(v.failures())}/{len(v.rows)}: " * bool(v.failures())
                  + (", ".join(f"{f['metric']} {f['observed']:.3g}" for f in v.failures()) or "-")]
                 for c, v in demo.items()]))

    ok = all(checks.values())
    seconds = time.perf_counter() - started
    print("\n" + "\n".join(f"[{'ok' if v else 'NOT MET'}] {k}" for k, v in checks.items()))
    print(json.dumps({
        "benchmark": "calibrate_gate", "date": f"{datetime.now(UTC):%Y-%m-%d}",
        "machine": f"{platform.machine()}, {platform.system()}", "splits": n,
        "first_split": args.first_split, "budget": sorted(budgets), "demo_budget": demo_budget,
        "passed": passed, "mixture_failures": {f"{s:.2f}": fails_at[s] for s in SHARES},
        "trip_share": trip, "demo": {c: v.success for c, v in demo.items()},
        "checks": checks, "ok": ok, "seconds": round(seconds, 1)}))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
