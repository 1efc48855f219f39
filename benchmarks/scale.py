"""The metrics stage's n-gram map-reduce on 1 and on 2 Dask workers (issue 5).

Run with the project's venv:  .venv/bin/python benchmarks/scale.py [--tokens 10000000]

The same shards as benchmarks/ngrams.py (the Brown Corpus tokenized with the default prior's
tokenizer, cycled with a fresh document order per pass to --tokens tokens, --shards Parquet
shards; even shards the candidate, odd ones the reference). Each side is counted by
``ngrams.count_sample``, the function the metrics stage (``comparison.compare``) counts its
equal-budget samples with, here on a sample of every row of the side's shards
(``ngrams.whole_files``); then ``ngram_metrics.metrics_of_counts`` of the two, as compare does.
For each worker count, a Dask LocalCluster of that many worker processes with one thread
each runs the map (``count_parts``, about four groups of shards per worker) and the reduce
(a tree of ``merge_counts`` tasks) of each side; the merged counts come back to this process,
which computes the twelve metrics. The cluster is started and warmed up (the workers import
numpy and the n-gram module on a two-shard run) before the clock starts; the figure is the
best of --repeat runs. "busy workers" is the tasks' compute time over the wall time: near
the worker count when the stage keeps every worker busy (on a machine shared with other
work, the wall time can fall short of that while this stays high); "CPU share" is the CPU
time the workers got per worker and wall second (1.0: a core each). The values are checked
against the same functions run here without Dask (``count_sample`` without a client).

Prints tokens/s for each worker count and the ratio of 2 workers to 1 (target >= 1.6x),
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ngrams import assets_root, brown_token_ids, shard_tokens, write_shards  # noqa: E402

from semisynth.quality.ngram_metrics import metrics_of_counts  # noqa: E402
from semisynth.quality.ngrams import count_sample, whole_files  # noqa: E402

ORDERS = (1, 2, 3)


def ngram_stage(cand_parts, ref_parts, buckets: int, client=None) -> dict[str, float]:
    """The stage's n-gram work on two samples: each counted by count_sample, then their metrics."""
    return metrics_of_counts(count_sample(cand_parts, ORDERS, client),
                             count_sample(ref_parts, ORDERS, client), ORDERS, buckets)


# Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's
# adaptive mmap threshold: every numpy temporary over 128 KiB is then a fresh mmap, paid in
# page faults (the stage ran 2x slower in a worker than in a plain process). Temporaries up
# to this size come from the heap again; memory is still trimmed back to the OS.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 2**20)}


def timed_runs(workers: int, cand, ref, buckets: int, repeat: int,
               env: dict[str, str]) -> tuple[list[dict], dict]:
    """Best-of runs on a fresh LocalCluster: wall seconds and the seconds the tasks computed."""
    import dask
    from distributed import Client, LocalCluster, get_task_stream

    with (dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}),
          LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                       dashboard_address=":0") as cluster,
          Client(cluster) as client):
        client.wait_for_workers(workers)
        ngram_stage(cand[:1], ref[:1], buckets, client)  # warm-up
        runs = []
        for _ in range(repeat):
            cpu = sum(client.run(time.process_time).values())
            with get_task_stream(client) as stream:
                start = time.perf_counter()
                values = ngram_stage(cand, ref, buckets, client)
                seconds = time.perf_counter() - start
            cpu = sum(client.run(time.process_time).values()) - cpu
            busy = sum(s["stop"] - s["start"] for t in stream.data for s in t["startstops"]
                       if s["action"] == "compute")
            runs.append({"seconds": seconds, "task_seconds": busy, "worker_cpu_seconds": cpu})
    return runs, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # large enough that the fixed costs of a Dask run (scheduling, the last merges, moving
    # the merged tables) are small next to the map step, as on a real corpus
    parser.add_argument("--tokens", type=int, default=100_000_000, help="tokens in all shards together")
    parser.add_argument("--shards", type=int, default=80)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buckets", type=int, default=2**20)
    parser.add_argument("--work", default=None, help="folder for the shards (default: a temporary one)")
    parser.add_argument("--dask-malloc-defaults", action="store_true",
                        help=f"start the workers without {', '.join(WORKER_ENV)}")
    args = parser.parse_args()
    env = {} if args.dask_malloc_defaults else WORKER_ENV
    with tempfile.TemporaryDirectory(prefix="semisynth-scale-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        paths = write_shards(brown_token_ids(assets_root()), args.tokens, args.shards, args.seed,
                             work / "shards")
        cand, ref = whole_files(paths[0::2]), whole_files(paths[1::2])
        total = shard_tokens(paths)
        print(f"{total} tokens in {len(paths)} shards; {os.cpu_count()} cores; worker environment {env}")
        start = time.perf_counter()
        local = ngram_stage(cand, ref, args.buckets)
        rows = {"no Dask (this process)": {"workers": 0, "seconds": time.perf_counter() - start}}
        for workers in args.workers:
            runs, values = timed_runs(workers, cand, ref, args.buckets, args.repeat, env)
            if values != local:
                raise SystemExit(f"{workers} workers: values differ from the local run")
            best = min(runs, key=lambda r: r["seconds"])
            rows[f"{workers} Dask worker{'s' * (workers > 1)}"] = {
                "workers": workers, **best, "all_seconds": [r["seconds"] for r in runs]}

    base = next((r["seconds"] for r in rows.values() if r["workers"] == 1), None)
    print(f"\n{'run':<24}{'seconds':>9}{'tokens/s':>12}{'vs 1 worker':>13}{'busy workers':>14}"
          f"{'worker CPU s':>14}{'CPU share':>11}")
    for label, r in rows.items():
        r["tokens_per_s"] = total / r["seconds"]
        line = f"{label:<24}{r['seconds']:>9.2f}{r['tokens_per_s']:>12.0f}"
        if base:
            line += f"{base / r['seconds']:>12.2f}x"
        if "task_seconds" in r:
            # tasks' compute seconds per wall second: how many workers were computing on
            # average; and the CPU the workers got per worker and wall second (1.0: a core each)
            r["cpu_share"] = r["worker_cpu_seconds"] / (r["seconds"] * r["workers"])
            line += (f"{r['task_seconds'] / r['seconds']:>14.2f}{r['worker_cpu_seconds']:>14.2f}"
                     f"{r['cpu_share']:>11.2f}")
        print(line)
    by_workers = {r["workers"]: r for r in rows.values()}
    speedup = by_workers[1]["seconds"] / by_workers[2]["seconds"] if {1, 2} <= by_workers.keys() else None
    if speedup:
        print(f"\n2 workers / 1 worker: {speedup:.2f}x the throughput (target >= 1.6x); values equal "
              f"to the run without Dask: yes")
    print(json.dumps({
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "tokens": total, "shards": len(paths), "orders": list(ORDERS), "repeat": args.repeat,
        "worker_env": env, "runs": rows, "speedup_2_vs_1": speedup,
    }))


if __name__ == "__main__":
    main()
