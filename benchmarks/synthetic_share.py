"""Calibrate the synthetic-share estimate (``semisynth.quality.share``) on the demo corpora.

    .venv/bin/python benchmarks/synthetic_share.py [--root var/bench-share] [--splits 20]

Data, all cached under ``--root`` (a re-run does no model work):

- human: the Brown Corpus (500 documents, ``tasks.assets.fetch_brown``);
- synthetic: text the prior writes from the first 12 words of Brown documents
  (``tasks.assets.synthesize``, the demo's generator: 384 new tokens), written in one
  cached file per Brown shard (``--synthetic-per-shard`` documents seeded by that shard) so
  that an interrupted generation keeps what it finished;
- both ingested (``tasks.ingest.ingest``) and scored with the prior by the pipeline's own
  ``tasks.score.score_shard``, with the prior and edit settings of configs/demo.yaml
  (512 tokens, ``precision: auto``).

Each of ``--splits`` seeded splits cuts both corpora into a reference part and a candidate
part (``--human-ref`` / ``--synthetic-ref`` documents go to the references); for every
true share a in 0, 0.1, 0.25, 0.5, 0.75, 1 the candidate holds round(a * n) synthetic and
n - round(a * n) human documents of the candidate parts (n = ``--candidate-docs``). So the
candidate never shares a document with either reference, and the true share is exact.
Per share: the mean absolute error of the estimate, the coverage of its 95% interval and
the mean interval width. Prints a table and one JSON line; exits 1 when the issue's bar
(MAE <= 0.05 and coverage >= 90% at every share) is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from semisynth.config import Config, load_config
from semisynth.quality.share import FEATURES, ScoredDocs, estimate_share, read_scored_docs
from semisynth.settings import env_name
from semisynth.tasks.assets import fetch_brown, synthesize
from semisynth.tasks.ingest import ingest
from semisynth.tasks.prior import fetch_default_prior, load_prior, resolve_model
from semisynth.tasks.score import score_key, score_shard

REPO = Path(__file__).resolve().parents[1]
SHARES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
MAE_MAX, COVERAGE_MIN = 0.05, 0.90
SHARD_DOCS = 10


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def generate_synthetic(root: Path, cfg: Config, brown: list[Path], per_shard: int,
                       new_tokens: int) -> list[Path]:
    """One cached file of synthetic documents per given Brown shard, each seeded by that
    shard's first ``per_shard`` documents."""
    out_dir = root / "assets" / "synthetic-bench"
    files = []
    for i, shard in enumerate(brown):
        out = out_dir / f"smollm2-{shard.name.split('.')[0]}-{per_shard}x{new_tokens}.jsonl.gz"
        if not out.exists():
            prior = load_prior(cfg.prior.model, root, cfg.prior.precision)
            started, cpu = time.perf_counter(), time.process_time()
            synthesize(prior, [shard], out, per_shard, new_tokens, seed=cfg.seed + i)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            say(f"generated {per_shard} documents from {shard.name} in {seconds:.0f} s, "
                f"{cpu:.0f} CPU s ({per_shard * new_tokens / seconds:.1f} new tokens/s)")
        files.append(out)
    return files


def score_corpus(root: Path, cfg: Config, name: str, files: list[Path],
                 limit_docs: int | None = None, id_field: str = "id") -> list[Path]:
    """Ingest then score+edit a corpus with the pipeline's code; the score files in order.
    Shards of SHARD_DOCS documents, not the config's 50: the cache's unit is a shard, so an
    interrupted run loses little (sharding changes only how documents are batched)."""
    model_id = resolve_model(cfg.prior.model, root)[1]
    score_dir = root / "scores" / score_key(model_id, cfg.prior, cfg.edit, cfg.seed)
    result = ingest([str(f) for f in files], root / "shards" / name, name, id_field=id_field,
                    shard_docs=SHARD_DOCS, limit_docs=limit_docs)
    scores = []
    for shard in result.shards:
        started, cpu = time.perf_counter(), time.process_time()
        stats = score_shard(Path(shard.path), score_dir / Path(shard.path).name, root,
                            cfg.prior, cfg.edit, cfg.seed)
        if stats.model_work:
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            say(f"scored {name} shard {shard.shard_hash}: {stats.documents} documents, "
                f"{stats.scored_tokens} tokens in {seconds:.0f} s, {cpu:.0f} CPU s "
                f"({stats.scored_tokens / seconds:.0f} tokens/s)")
        scores.append(Path(stats.path))
    return scores


def prepare(root: Path, cfg: Config, human_docs: int, synthetic_shards: int, per_shard: int,
            new_tokens: int, synthetic_files: list[str] | None = None) -> tuple[list[Path], list[Path]]:
    """The score files of the human and the synthetic corpus (made once, then cached):
    the first ``human_docs`` Brown documents (the shards interleave the genres), and the
    text the prior writes from the first ``synthetic_shards`` Brown shards (or, given
    ``synthetic_files``, documents the prior already wrote, e.g. the demo's)."""
    from semisynth.documents import expand_paths

    fetch_default_prior(root)
    brown = fetch_brown(root)
    if synthetic_files:
        synthetic = [Path(p) for p in expand_paths([str(Path(f).resolve()) for f in synthetic_files])]
    else:
        synthetic = generate_synthetic(root, cfg, brown[:synthetic_shards], per_shard, new_tokens)
    return (score_corpus(root, cfg, "brown", brown, human_docs),
            # the files' own ids are not used: files written before 2026-12-02 all number
            # their documents synthetic/00000, ..., so ingest would keep the first file only;
            # an id field no row has gives each document its file and line
            score_corpus(root, cfg, "synthetic", synthetic, id_field="(file and line)"))


def split_parts(n_docs: int, held: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A random cut of a corpus: (reference rows, candidate-pool rows of size ``held``)."""
    order = rng.permutation(n_docs)
    return np.sort(order[held:]), np.sort(order[:held])


def split_case(human: ScoredDocs, synthetic: ScoredDocs, n: int, share: float, rng):
    """One case: the two references and a candidate of n documents at an exact share,
    candidate documents drawn from outside both references."""
    h_ref, h_pool = split_parts(len(human), n, rng)
    s_ref, s_pool = split_parts(len(synthetic), n, rng)
    k = int(round(share * n))
    cand = concat(human.take(rng.choice(h_pool, n - k, replace=False)),
                  synthetic.take(rng.choice(s_pool, k, replace=False)))
    refs = human.take(h_ref), synthetic.take(s_ref)
    shared = set(cand.hashes) & (set(refs[0].hashes) | set(refs[1].hashes))
    assert not shared, f"a candidate shares {len(shared)} documents with a reference"
    return cand, refs, k / n


def concat(*parts: ScoredDocs) -> ScoredDocs:
    return ScoredDocs(np.concatenate([p.ppl for p in parts]),
                      [t for p in parts for t in p.tokens],
                      np.concatenate([p.hashes for p in parts]))


def calibrate(human: ScoredDocs, synthetic: ScoredDocs, splits: int, n: int, bootstrap: int,
              seed: int, features: tuple[str, ...]) -> dict[float, list]:
    """Per true share, the (estimate, low, high, true share) of every split."""
    results: dict[float, list] = {s: [] for s in SHARES}
    started = time.perf_counter()
    for split in range(splits):
        for i, share in enumerate(SHARES):
            # the same cut of both corpora for every share of one split
            cand, (h_ref, s_ref), truth = split_case(
                human, synthetic, n, share, np.random.default_rng([seed, split]))
            est = estimate_share(cand, h_ref, s_ref, features=features, bootstrap=bootstrap,
                                 seed=seed * 1000 + split * len(SHARES) + i)
            assert est.documents_left_out == {"human": 0, "synthetic": 0}
            results[share].append((est.synthetic_share, est.ci_low, est.ci_high, truth))
        say(f"  split {split}: " + " ".join(f"{s:g}->{results[s][-1][0]:.3f}" for s in SHARES)
            + f" ({time.perf_counter() - started:.0f} s)")
    return results


def summary(results: dict[float, list]) -> list[dict]:
    rows = []
    for share, cases in results.items():
        est, low, high, truth = (np.array(c) for c in zip(*cases, strict=True))
        rows.append({"share": share, "splits": len(est),
                     "mean_estimate": float(est.mean()),
                     "mae": float(np.abs(est - truth).mean()),
                     "max_error": float(np.abs(est - truth).max()),
                     "coverage": float(((low <= truth) & (truth <= high)).mean()),
                     "mean_width": float((high - low).mean()),
                     "max_estimate": float(est.max())})
    return rows


def describe(name: str, docs: ScoredDocs) -> str:
    log_ppl = np.log(docs.ppl)
    q1, q2, q3 = np.percentile(np.exp(log_ppl), [25, 50, 75])
    tokens = np.array([len(t) for t in docs.tokens])
    return (f"{name}: {len(docs)} documents, {tokens.mean():.0f} scored tokens on average; "
            f"perplexity quartiles {q1:.1f} / {q2:.1f} / {q3:.1f}")


def markdown(rows: list[dict]) -> str:
    lines = ["| true share | mean estimate | MAE | max error | 95% CI coverage | mean CI width |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['share']:g} | {r['mean_estimate']:.3f} | {r['mae']:.3f} | "
              f"{r['max_error']:.3f} | {r['coverage']:.0%} | {r['mean_width']:.3f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(REPO / "var" / "bench-share"),
                   help="data root for the prior, the corpora and their scores (cached)")
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--human-docs", type=int, default=500, help="Brown documents to use")
    p.add_argument("--synthetic-shards", type=int, default=10,
                   help="Brown shards whose documents seed the synthetic text")
    p.add_argument("--synthetic-per-shard", type=int, default=32,
                   help="synthetic documents seeded by each of those shards")
    p.add_argument("--synthetic-tokens", type=int, default=384,
                   help="new tokens per synthetic document (the demo's 384)")
    p.add_argument("--synthetic-files", nargs="+", metavar="GLOB", help=(
        "use these files of the prior's text (e.g. the demo's and the experiment's, under "
        "var/assets/synthetic) instead of generating"))
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for generation and scoring (default: every core; "
                        "1 spends far less CPU time on a machine other jobs share)")
    p.add_argument("--prepare-only", action="store_true",
                   help="generate and score the corpora, then stop")
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--candidate-docs", type=int, default=100,
                   help="documents per candidate; the rest of each corpus is its reference")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--features", default=",".join(FEATURES))
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    cfg = load_config(args.config)
    if args.threads:
        os.environ[env_name("torch_threads")] = str(args.threads)  # the scorer's setting
        torch.set_num_threads(args.threads)
    human_files, synthetic_files = prepare(root, cfg, args.human_docs, args.synthetic_shards,
                                           args.synthetic_per_shard, args.synthetic_tokens,
                                           args.synthetic_files)
    if args.prepare_only:
        return 0
    human, synthetic = read_scored_docs(human_files), read_scored_docs(synthetic_files)
    features = tuple(args.features.split(","))
    n = args.candidate_docs
    say(describe("human (Brown)", human))
    say(describe("synthetic (the prior's)", synthetic))
    say(f"# {args.splits} splits x {len(SHARES)} shares; candidates of {n} documents, "
        f"references of {len(human) - n} human and {len(synthetic) - n} synthetic documents; "
        f"features {', '.join(features)}; bootstrap {args.bootstrap}")
    started = time.perf_counter()
    rows = summary(calibrate(human, synthetic, args.splits, n, args.bootstrap, cfg.seed,
                             features))
    seconds = time.perf_counter() - started
    ok = all(r["mae"] <= MAE_MAX and r["coverage"] >= COVERAGE_MIN for r in rows)
    print(markdown(rows))
    print(f"\n{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {seconds:.0f} s: "
          f"{'meets' if ok else 'DOES NOT meet'} MAE <= {MAE_MAX} and coverage >= "
          f"{COVERAGE_MIN:.0%} at every share")
    print(json.dumps({"benchmark": "synthetic_share", "splits": args.splits, "candidate_docs": n,
                      "human_docs": len(human), "synthetic_docs": len(synthetic),
                      "features": list(features), "bootstrap": args.bootstrap,
                      "seconds": round(seconds, 1), "ok": ok, "shares": rows}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
