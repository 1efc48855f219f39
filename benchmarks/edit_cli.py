"""`semisynth edit` as a user runs it, whole process, against the official code's shape.

Run with the project's venv:
  .venv/bin/python benchmarks/edit_cli.py --docs 250 --data-root var/test-assets

Writes N Brown documents cut to 512 tokens (as score_edit.py's) to a JSON-lines file, then
times, each as a process of its own, from its start to its exit (imports, loading the
prior, reading, scoring, editing, writing):
  (a) the official code's shape (score_edit.official_style: per document a forward pass,
      top-8 log-probs, a per-token Python loop) in the auto precision, writing the edited
      documents as JSON lines;
  (b) `semisynth edit IN OUT --max-tokens 512`, with the data root's compile cache as it is
      (``--cold``: an empty one, as on a host's first run);
  (c) `semisynth edit` on one of the documents (the target: at most 5 s), first,
      ``--one-doc-runs`` times (the median is the figure; ``--one-doc-only``: only this).
The host's matmul rate in the auto precision is measured first: the same host ran a third
slower at some hours. Prints the figures and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from semisynth.config import data_root

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def official_child(args) -> None:
    """Child mode: the official shape over the file's documents, the edited ones written."""
    from score_edit import official_prior, official_style

    from semisynth.tasks.prior import resolve_precision

    torch.set_num_threads(os.cpu_count() or 1)
    prior = official_prior(Path(args.data_root), resolve_precision("auto"))
    rows = [json.loads(line) for line in Path(args.official_child).read_text().splitlines()]
    edited: list[list[int]] = []
    scored, _ = official_style(prior, [r["text"] for r in rows], args.tokens, 1, edited)
    with open(args.out, "w") as out:
        for row, tokens in zip(rows, edited, strict=True):
            out.write(json.dumps({"id": row["id"], "text": prior.tokenizer.decode(tokens)}) + "\n")
    print(json.dumps({"scored_tokens": scored, "docs": len(rows)}))


def timed_process(cmd: list[str], env: dict) -> tuple[float, str, str]:
    """Seconds from the process's start to its exit, its stdout and its stderr."""
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout, out.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=250)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--data-root", default=str(data_root()))
    parser.add_argument("--cold", action="store_true", help="semisynth edit with an empty compile cache")
    parser.add_argument("--one-doc-runs", type=int, default=3,
                        help="times the one-document edit runs (the median is the figure)")
    parser.add_argument("--one-doc-only", action="store_true",
                        help="only the one-document edit (and the host's matmul rate)")
    parser.add_argument("--official-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.official_child:
        return official_child(args)
    from score_edit import human_documents, matmul_gflops
    from transformers import AutoTokenizer

    from semisynth.tasks.prior import default_prior_folder, resolve_precision

    root = Path(args.data_root).resolve()
    precision = resolve_precision("auto")
    # the host's speed in this run: it varied by a third within a day on the same host
    gflops = matmul_gflops(torch.bfloat16 if precision == "bfloat16" else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(default_prior_folder(root))
    ids, texts = human_documents(root, args.docs, args.tokens, tokenizer)
    semisynth = str(Path(sys.executable).parent / "semisynth")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs, one = tmp / "docs.jsonl", tmp / "one.jsonl"
        docs.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True)))
        one.write_text(json.dumps({"id": ids[0], "text": texts[0]}) + "\n")
        env = {**os.environ, "SEMISYNTH_HOME": str(root)}
        if args.cold:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
        one_runs = [timed_process([semisynth, "edit", str(one), str(tmp / "one-out.jsonl")], env)[0]
                    for _ in range(args.one_doc_runs)]
        one_s = statistics.median(one_runs)
        official_s = edit_s = scored = None
        compiled = []
        if not args.one_doc_only:
            official_s, official_out, _ = timed_process(
                [sys.executable, __file__, "--official-child", str(docs), "--out", str(tmp / "official.jsonl"),
                 "--tokens", str(args.tokens), "--data-root", str(root)], env)
            scored = json.loads(official_out.strip().splitlines()[-1])["scored_tokens"]
            edit_s, _, edit_log = timed_process(
                [semisynth, "-v", "edit", str(docs), str(tmp / "edited.jsonl"), "--max-tokens", str(args.tokens)],
                env)
            compiled = [line for line in edit_log.splitlines() if "compiled the prior" in line]
    summary = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "precision": precision, "auto_matmul_gflops": gflops,
        "one_doc_edit_seconds": one_s, "one_doc_edit_runs": one_runs,
    }
    print(f"host: {gflops:.0f} GFLOP/s in {precision} matmuls")
    print(f"semisynth edit on one document: {one_s:.1f} s (median of {', '.join(f'{r:.1f}' for r in one_runs)})")
    if not args.one_doc_only:
        summary.update({
            "docs": args.docs, "tokens_per_doc": args.tokens, "scored_tokens": scored,
            "cold_cache": args.cold, "official_process_seconds": official_s,
            "edit_process_seconds": edit_s, "edit_speedup_vs_official_auto": official_s / edit_s,
            "official_tokens_per_s": scored / official_s, "edit_tokens_per_s": scored / edit_s,
            "edit_compiled": compiled[-1].strip() if compiled else None,
        })
        print(f"official shape, own process: {official_s:.1f} s ({scored / official_s:.0f} tokens/s)")
        print(f"semisynth edit, whole process: {edit_s:.1f} s ({scored / edit_s:.0f} tokens/s): "
              f"{official_s / edit_s:.2f}x; compiled: {summary['edit_compiled'] or 'no'}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
