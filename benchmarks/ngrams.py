"""The n-gram stage against a straightforward collections.Counter implementation (issue 4).

Run with the project's venv:  .venv/bin/python benchmarks/ngrams.py [--tokens 10000000]

Data: the Brown Corpus (500 documents) tokenized with the default prior's tokenizer, cycled
with a freshly shuffled document order per pass until the stream holds --tokens tokens, and
cut at document boundaries into --shards Parquet shards (a list<int32> column ``token_ids``,
as in the score files), written under --work (a temporary folder by default). The even
shards are the candidate, the odd shards the reference half.

Both implementations compute distinct_n, top1pct_mass_n, ref_coverage_n and js_n (2**20
buckets) for n = 1, 2, 3 of the candidate against the reference, reading the shards one at a
time:
  (a) semisynth: ``ngram_metrics.shard_ngram_metrics`` (per shard: vectorised count tables; merged
      as they come; metrics from the merged tables), one process;
  (b) Counter: per shard ``to_pylist``, then ``Counter.update`` over the n-gram tuples of
      every document; the metrics from the Counters in plain Python (the JS hash is the same
      multiply-shift of the same packed key).
Each runs in a subprocess of its own, --repeat times (default 2; the best run counts, for
both), which reports its wall and CPU time (reading included, start-up and imports excluded)
and its peak resident memory (VmHWM) above what it held before the first run. (a) also runs
on a half and on a quarter of the shards: its memory follows the size of the count
tables (plus a fixed part), not the number of tokens or shards.
Prints the values side by side (asserting they agree: exactly for distinct, top1pct_mass,
ref_coverage; to 1e-12 for js, whose float sums run in a different order), the table of
timings and memory, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semisynth.documents import read_records
from semisynth.quality.ngram_metrics import HASH_MULT, NGRAM_METRICS, shard_ngram_metrics
from semisynth.quality.ngrams import TOKEN_BITS, count_sample, whole_files

REPO = Path(__file__).resolve().parents[1]
EXACT = ("distinct", "top1pct_mass", "ref_coverage")
JS_TOLERANCE = 1e-12


# -----------------------------------------------------------------------------
# data: Brown, tokenized, cycled to the token budget, in shards

def assets_root() -> Path:
    """The cached test assets (the prior and the Brown Corpus), else the data root."""
    env = os.environ.get("SEMISYNTH_TEST_ASSETS")
    if env:
        return Path(env)
    cached = REPO / "var" / "test-assets"
    if (cached / "assets" / "brown").is_dir():
        return cached
    from semisynth.config import data_root

    return data_root()


def brown_token_ids(root: Path) -> list[np.ndarray]:
    from transformers import AutoTokenizer

    from semisynth.tasks.assets import fetch_brown
    from semisynth.tasks.prior import resolve_model

    folder, _ = resolve_model("default", root)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [rec.text for shard in fetch_brown(root) for rec in read_records(str(shard))
             if rec.reason is None]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(d, np.int32) for d in ids]


def write_shards(docs: list[np.ndarray], tokens: int, shards: int, seed: int, out: Path) -> list[Path]:
    """Cycle the documents (a new shuffle each pass) to >= tokens, cut into shards."""
    rng = np.random.default_rng(seed)
    stream, total = [], 0
    while total < tokens:
        for i in rng.permutation(len(docs)):
            stream.append(docs[i])
            total += len(docs[i])
    cum = np.cumsum([len(d) for d in stream])
    cuts = np.searchsorted(cum, np.arange(1, shards) * total / shards) + 1
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (lo, hi) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, len(stream)], strict=True)):
        path = out / f"shard-{k:04d}.parquet"
        column = pa.array([d.tolist() for d in stream[lo:hi]], pa.list_(pa.int32()))
        pq.write_table(pa.table({"token_ids": column}), path)
        paths.append(path)
    return paths


def shard_tokens(paths) -> int:
    return sum(len(pq.read_table(p, columns=["token_ids"]).column("token_ids").combine_chunks().values)
               for p in paths)


# -----------------------------------------------------------------------------
# (b) the straightforward implementation

def counter_tables(paths, orders) -> dict[int, Counter]:
    tables = {n: Counter() for n in orders}
    for path in paths:  # one shard at a time
        for doc in pq.read_table(path, columns=["token_ids"]).column("token_ids").to_pylist():
            for n in orders:
                tables[n].update(zip(*(doc[i:] for i in range(n)), strict=False))
    return tables


def counter_bucket(gram: tuple, buckets: int) -> int:
    key = 0
    for token in gram:
        key = (key << TOKEN_BITS) | token
    return (((key * int(HASH_MULT)) % 2**64) >> 32) * buckets >> 32


def counter_metrics(cand: Counter, ref: Counter, n: int, buckets: int) -> dict[str, float]:
    total = sum(cand.values())
    k = -(-len(cand) // 100)
    frequent = [g for g, c in ref.items() if c >= 2]

    def distribution(counter: Counter) -> dict[int, float]:
        mass = Counter()
        for gram, c in counter.items():
            mass[counter_bucket(gram, buckets)] += c
        size = sum(counter.values())
        return {b: c / size for b, c in mass.items()}

    p, q = distribution(cand), distribution(ref)
    js = 0.0
    for b in p.keys() | q.keys():
        pb, qb = p.get(b, 0.0), q.get(b, 0.0)
        m = 0.5 * (pb + qb)
        if pb:
            js += 0.5 * pb * math.log2(pb / m)
        if qb:
            js += 0.5 * qb * math.log2(qb / m)
    return {
        f"distinct_{n}": len(cand) / total,
        f"top1pct_mass_{n}": sum(sorted(cand.values(), reverse=True)[:k]) / total,
        f"ref_coverage_{n}": sum(g in cand for g in frequent) / len(frequent),
        f"js_{n}": min(max(js, 0.0), 1.0),
    }


def counter_stage(cand_paths, ref_paths, orders, buckets) -> dict[str, float]:
    cand, ref = counter_tables(cand_paths, orders), counter_tables(ref_paths, orders)
    out = {}
    for n in orders:
        out |= counter_metrics(cand[n], ref[n], n, buckets)
    return out


# -----------------------------------------------------------------------------
# (a) semisynth, and the child process that measures either

def semisynth_stage(cand_paths, ref_paths, orders, buckets) -> dict[str, float]:
    return shard_ngram_metrics(cand_paths, ref_paths, orders, buckets)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: on Linux ru_maxrss carries
    the high-water mark of the parent the child was forked from across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    spec = json.loads(Path(args.child_spec).read_text())
    stage = {"semisynth": semisynth_stage, "counter": counter_stage}[args.child]
    orders, buckets = tuple(spec["orders"]), spec["buckets"]
    pq.read_table(spec["cand"][0], columns=["token_ids"])  # start-up: Arrow's pools and threads
    before = peak_rss_mb()
    times = []
    for _ in range(spec["repeat"]):
        start, cpu = time.perf_counter(), time.process_time()
        values = stage(spec["cand"], spec["ref"], orders, buckets)
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    seconds, cpu = min(times)
    out = {"seconds": seconds, "cpu_seconds": cpu, "all_seconds": [t for t, _ in times],
           "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(), "values": values}
    if args.child == "semisynth":  # the size of what the reduce holds at the end
        tables = [count_sample(whole_files(spec[side]), orders) for side in ("cand", "ref")]
        out["table_mb"] = sum(t.nbytes for t in tables) / 2**20
    print(json.dumps(out))


def run_child(kind: str, cand, ref, orders, buckets, work: Path, repeat: int = 1) -> dict:
    spec = work / f"spec-{kind}-{len(cand)}.json"
    spec.write_text(json.dumps({"cand": [str(p) for p in cand], "ref": [str(p) for p in ref],
                                "orders": list(orders), "buckets": buckets, "repeat": repeat}))
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--child-spec", str(spec)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def agree(metric: str, a: float, b: float) -> bool:
    if metric.startswith(EXACT):
        return a == b or (math.isnan(a) and math.isnan(b))
    return abs(a - b) <= JS_TOLERANCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=10_000_000, help="tokens in all shards together")
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buckets", type=int, default=2**20)
    parser.add_argument("--work", default=None, help="folder for the shards (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each implementation (the same process); the best counts")
    parser.add_argument("--child", choices=["semisynth", "counter"], help=argparse.SUPPRESS)
    parser.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    orders = (1, 2, 3)
    with tempfile.TemporaryDirectory(prefix="semisynth-ngrams-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        started = time.perf_counter()
        paths = write_shards(brown_token_ids(assets_root()), args.tokens, args.shards, args.seed,
                             work / "shards")
        cand, ref = paths[0::2], paths[1::2]
        total = shard_tokens(paths)
        cand_tokens = shard_tokens(cand)
        print(f"{total} tokens in {len(paths)} shards (candidate {cand_tokens}, reference "
              f"{total - cand_tokens}); prepared in {time.perf_counter() - started:.0f}s")
        runs = {"semisynth": run_child("semisynth", cand, ref, orders, args.buckets, work, args.repeat)}
        for share in (2, 4):  # memory at a half and a quarter of the shards
            part = cand[: len(cand) // share], ref[: len(ref) // share]
            runs[f"semisynth 1/{share}"] = run_child("semisynth", *part, orders, args.buckets, work,
                                                     args.repeat)
            runs[f"semisynth 1/{share}"]["tokens"] = shard_tokens(part[0] + part[1])
        runs["counter"] = run_child("counter", cand, ref, orders, args.buckets, work, args.repeat)
        runs["semisynth"]["tokens"] = runs["counter"]["tokens"] = total
    fast, slow = runs["semisynth"], runs["counter"]

    names = [f"{m}_{n}" for n in orders for m in NGRAM_METRICS]
    print(f"\n{'metric':<17}{'semisynth':>22}{'Counter':>22}  agree")
    mismatches = []
    for name in names:
        a, b = fast["values"][name], slow["values"][name]
        ok = agree(name, a, b)
        mismatches += [] if ok else [name]
        print(f"{name:<17}{a!r:>22}{b!r:>22}  {'yes' if ok else 'NO'}")
    js_diff = max(abs(fast["values"][f"js_{n}"] - slow["values"][f"js_{n}"]) for n in orders)
    speedup = slow["seconds"] / fast["seconds"]
    cpu_speedup = slow["cpu_seconds"] / fast["cpu_seconds"]
    print(f"\n{'implementation':<24}{'tokens':>11}{'seconds':>9}{'CPU s':>8}{'tokens/s':>11}"
          f"{'peak RSS MB':>13}{'above start':>13}{'tables MB':>11}")
    for label, r in runs.items():
        tables = f"{r['table_mb']:>11.0f}" if "table_mb" in r else ""
        print(f"{label:<24}{r['tokens']:>11}{r['seconds']:>9.2f}{r['cpu_seconds']:>8.2f}"
              f"{r['tokens'] / r['seconds']:>11.0f}{r['peak_rss_mb']:>13.0f}"
              f"{r['peak_rss_mb'] - r['rss_before_mb']:>13.0f}{tables}")
    print(f"\nspeed-up: {speedup:.1f}x wall, {cpu_speedup:.1f}x CPU (target >= 15x); values agree: "
          f"{'yes' if not mismatches else 'NO: ' + ', '.join(mismatches)} (js max |diff| {js_diff:.1e})")
    growth = [runs[k]["peak_rss_mb"] - runs[k]["rss_before_mb"] for k in ("semisynth 1/4", "semisynth 1/2", "semisynth")]
    print(f"memory above start, semisynth at 1/4, 1/2, all of the shards: {growth[0]:.0f}, {growth[1]:.0f}, "
          f"{growth[2]:.0f} MB (the token stream alone, as int64: {total * 8 / 2**20:.0f} MB); "
          f"Counter: {slow['peak_rss_mb'] - slow['rss_before_mb']:.0f} MB")
    keep = ("tokens", "seconds", "cpu_seconds", "all_seconds", "peak_rss_mb", "rss_before_mb", "table_mb")
    summary = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "numpy": np.__version__, "tokens": total, "shards": len(paths), "orders": list(orders),
        "buckets": args.buckets, "repeat": args.repeat, "runs": {k: {f: r[f] for f in keep if f in r} for k, r in runs.items()},
        "speedup": speedup, "cpu_speedup": cpu_speedup, "values_agree": not mismatches,
        "js_max_abs_diff": js_diff, "values": fast["values"],
    }
    print(json.dumps(summary))
    if mismatches:
        raise SystemExit(f"values differ: {mismatches}")


if __name__ == "__main__":
    main()
