"""The nightly flow end to end at growing corpus sizes: does memory follow the metrics budget
or the corpus? (issue 17, item 2)

Run with the project's venv:  .venv/bin/python benchmarks/flow_scale.py [--sizes 1 4 16]

What runs, for each size s (1x, 4x, 16x of --base-tokens, default 625,000 tokens):

- The corpus: Brown Corpus text (``semisynth.tasks.assets.fetch_brown``, cached under
  --assets) cut into documents of --doc-words words (default 400 to 2,000) at seeded points,
  pass after pass over Brown with other cut points each pass, so that every document has an id
  and a text of its own and each pass sits in files of its own, until the two file-backed
  corpora together hold s x --base-tokens tokens of the prior's tokenizer. Tokens are counted
  as the prior tokenizes them (no special tokens), so 16x at the default is 10M tokens.
- The config (written to the size's data root; every stage runs):
  ``human`` (role reference, files) and ``fresh`` (a candidate, files, synthetic_reference:
  human_toedit, so the share estimate runs), half the tokens each; ``human_toedit``
  (edited_from human, release: true); ``mixed`` (mix of fresh and human_toedit, 50/50 by
  documents, release: true). ``metrics.budget_tokens`` is left at its default.
- The prior: built once per benchmark run, before the first size, from nothing on disk: a
  byte-level BPE tokenizer (--vocab, default 4,096) trained with ``tokenizers`` on the Brown
  Corpus and a 2-layer Llama (hidden --hidden, default 64, context 1,024) with seeded random
  weights, saved as an ordinary Hugging Face folder that ``prior.model`` names, loaded by
  the pipeline's own ``load_prior``. Random weights give every token about the same
  probability, none above ToEdit's 0.99, so the benchmark's ``edit.threshold`` is the
  prior's 98th percentile of p(x_i) on Brown text: about 2% of positions are redrawn, about
  as many as the real prior redraws at 0.99. Its scoring rate (one thread, as a worker) is
  measured with the score+edit engine before the sizes run.
- One Prefect server for the whole benchmark (its own PREFECT_HOME under --work, analytics
  off) and one Dask LocalCluster that this script starts: 2 worker processes of 1 thread,
  ``SEMISYNTH_TORCH_THREADS=1``, reached by the flow through ``SEMISYNTH_DASK_ADDRESS``.
  The workers are restarted before every size, so each size's worker peaks are its own.
- The flow: ``semisynth.flows.nightly.run(config)`` in a child process of its own per size,
  on a fresh data root per size (shards, score files, warehouse, releases: nothing is reused
  between sizes; only the prior's folder is shared).

Measured, per size: the stages' wall time from the flow run's Prefect task runs (per stage,
the union of its task runs' [start, end] intervals), the child's whole wall time, the peak
resident memory (VmHWM of /proc/<pid>/status: the process's own high-water mark, not
ru_maxrss, which a child inherits from its parent) of the flow process (read by the child
itself as the flow returns; polled every second as a fallback) and of each Dask worker
process (read at the end of the size; polled too, for a worker that died), the machine's
load average before and after. A blocked release (the flow run ends Failed) is a result
here: the random prior's verdicts mean nothing. A crash or a --size-timeout is recorded as
the size's ``status`` and ends the benchmark.

Prints a table, the three "done when" checks of issue 17 (largest size against the
smallest): the flow's peak within 1.25x, each worker's peak within 1.25x (workers ranked by
peak), the wall time growing no faster than the tokens; then one JSON line
{"sizes": [...], ...}, smallest size first.

--dry-run: one size of 24,000 tokens with short documents and small shards (about a
minute); tests/test_flow_scale.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ngrams import assets_root  # noqa: E402  (the Brown Corpus where the other benchmarks find it)

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
CONTEXT = 1024  # the tiny prior's context: most documents fit one or two windows
PRIOR_LAYERS = 2
# p(x_i) percentile that becomes the edit threshold: the real prior redraws about 2% of
# positions at 0.99 (README: "the ~2% of positions with p > 0.99")
REVISE_PERCENTILE = 98.0
# the flow's task names (flows/nightly.py) -> the stages reported; a task of another name
# is reported under its own name
STAGES = {"ingest": "ingest", "score-edit": "score", "derive": "derive",
          "record-corpora": "record", "metrics": "metrics", "gate": "gate", "release": "release"}
RATIO_LIMIT = 1.25
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


# -----------------------------------------------------------------------------
# host and process facts


def vm_mb(pid: int | str = "self", field: str = "VmHWM") -> float | None:
    """A memory figure of /proc/<pid>/status in MiB (VmHWM: the peak resident memory; VmRSS:
    the resident memory now); None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def host_facts() -> dict:
    flags, model = set(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu_model": model,
            "cpu_flags": [f for f in INTERESTING_FLAGS if f in flags],
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version()}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -----------------------------------------------------------------------------
# Brown text, the tiny prior, the corpus


def brown_documents(assets: Path) -> list[tuple[str, str]]:
    """(id, text) of the 500 Brown documents, fetched once into ``assets``."""
    from semisynth.tasks.assets import fetch_brown

    docs = []
    for shard in fetch_brown(assets):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            docs += [(row["id"], row["text"]) for row in map(json.loads, f)]
    return docs


def build_prior(folder: Path, texts: list[str], vocab: int, hidden: int, seed: int) -> None:
    """A byte-level BPE tokenizer trained on ``texts`` and a Llama with seeded random
    weights, saved as a Hugging Face folder (safetensors)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[eos], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, bos_token=eos,
                                   unk_token=eos)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=PRIOR_LAYERS, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=CONTEXT,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)


def revise_threshold(folder: Path, texts: list[str], percentile: float) -> float:
    """The ``percentile`` of p(x_i) over the first CONTEXT tokens of ``texts`` under the
    prior (float32): as an edit threshold, 100 - percentile % of positions are redrawn."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    probs = []
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:CONTEXT])
            logp = model(ids[None]).logits[0, :-1].float().log_softmax(-1)
            probs.append(logp.gather(1, ids[1:, None]).squeeze(1).exp().numpy())
    return float(np.percentile(np.concatenate(probs), percentile))


def scoring_rate(folder: Path, assets: Path, texts: list[str], threshold: float) -> dict:
    """The score+edit engine on ``texts`` in this process with one torch thread (as each
    worker runs): tokens/s and the share of positions redrawn."""
    from semisynth.config import EditConfig, PriorConfig
    from semisynth.tasks.prior import load_prior, resolve_precision
    from semisynth.tasks.toedit import Scorer

    prior_cfg = PriorConfig(model=str(folder))
    precision = resolve_precision(prior_cfg.precision)
    prior = load_prior(str(folder), assets, precision)
    scorer = Scorer.from_config(prior, prior_cfg, EditConfig(threshold=threshold), seed=0)
    scorer.score(["warm-up"], texts[:1])
    start = time.perf_counter()
    results = scorer.score([f"rate-{i}" for i in range(len(texts))], texts)
    seconds = time.perf_counter() - start
    tokens = sum(r.scored_tokens for r in results)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds),
            "revised_share": sum(r.revised_tokens for r in results) / max(tokens, 1),
            "edited_share": sum(r.edited_tokens for r in results) / max(tokens, 1),
            "precision": precision, "torch_threads": 1}


@dataclass
class Side:
    """One file-backed corpus being written: its documents, cut into files of shard_docs."""

    name: str
    target: int
    folder: Path
    shard_docs: int
    tokens: int = 0
    documents: int = 0
    files: int = 0
    pending: list[dict] = field(default_factory=list)

    @property
    def needs(self) -> float:
        return self.tokens / self.target

    def add(self, doc: dict, tokens: int) -> None:
        self.pending.append(doc)
        self.tokens += tokens
        self.documents += 1
        if len(self.pending) == self.shard_docs:
            self.flush()

    def flush(self) -> None:
        """The pending documents as one file (one file per pass at least: ``new_pass``)."""
        if not self.pending:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{self.files:05d}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
            f.writelines(json.dumps(d) + "\n" for d in self.pending)
        self.files += 1
        self.pending = []


def write_corpus(brown: list[tuple[str, str]], tokenizer, folder: Path, total_tokens: int,
                 doc_words: tuple[int, int], shard_docs: int, seed: int) -> dict[str, Side]:
    """Brown cut into documents, pass after pass (each pass other seeded cut points, its
    documents in files of their own), dealt to the two corpora until each holds half of
    ``total_tokens`` (prior tokens). Ids: ``<corpus>/p<pass>/<brown id>/<piece>``."""
    import numpy as np

    sides = {name: Side(name, total_tokens // 2 + total_tokens % 2 * (name == "human"),
                        folder / name, shard_docs) for name in ("human", "fresh")}
    words = [(doc_id.split("/")[-1], re.findall(r"\S+\s*", text)) for doc_id, text in brown]
    lo, hi = doc_words
    pass_no = 0
    while any(s.tokens < s.target for s in sides.values()):
        rng = np.random.default_rng([seed, pass_no])
        for i in rng.permutation(len(words)):
            if all(s.tokens >= s.target for s in sides.values()):
                break
            name, doc = words[i]
            pos, pieces = int(rng.integers(0, lo)), []
            while pos < len(doc):
                n = int(rng.integers(lo, hi + 1))
                piece = "".join(doc[pos:pos + n]).strip()
                pos += n
                if len(piece.split()) >= lo // 2:  # a short tail is not a document
                    pieces.append(piece)
            counts = [len(e.ids) for e in tokenizer.encode_batch(pieces, add_special_tokens=False)]
            for k, (piece, tokens) in enumerate(zip(pieces, counts, strict=True)):
                open_sides = [s for s in sides.values() if s.tokens < s.target]
                if not open_sides:
                    break
                side = min(open_sides, key=lambda s: s.needs)
                side.add({"id": f"{side.name}/p{pass_no:02d}/{name}/{k:03d}", "text": piece}, tokens)
        for side in sides.values():
            side.flush()
        pass_no += 1
    return sides


def flow_config(root: Path, prior: Path, threshold: float, shard_docs: int, seed: int) -> dict:
    return {
        "name": "flow-scale",
        "data_root": str(root),
        "seed": seed,
        "shard_docs": shard_docs,
        "lock_wait_s": 60,
        # whole documents, in windows of the prior's context; precision auto (the default)
        "prior": {"model": str(prior)},
        "edit": {"strategy": "up_revise", "threshold": threshold, "top_k": 8, "beta": 1.5},
        "corpora": {
            "human": {"role": "reference", "paths": ["corpus/human/*.jsonl.gz"]},
            # the share estimate leaves a reference's documents that the candidate holds out
            # of that reference's fit: fresh shares none with human or human_toedit (the
            # mixture would hold every document of human_toedit, leaving it none)
            "fresh": {"paths": ["corpus/fresh/*.jsonl.gz"], "reference": "human",
                      "synthetic_reference": "human_toedit"},
            "human_toedit": {"edited_from": "human", "reference": "human", "release": True},
            "mixed": {"mix": {"fresh": 0.5, "human_toedit": 0.5}, "reference": "human",
                      "release": True},
        },
        # metrics: every default (budget_tokens too: the metrics stage's own choice)
        # gate: the random prior gives every document about the same perplexity, so the
        # perplexity expectations compare noise; they are opened up so that the edited
        # corpus can pass and the release stage runs (the verdicts are not what is measured)
        "gate": {"ppl_low_frac_max_excess": 1.0, "ppl_tail_frac_max_deficit": 1.0,
                 "ppl_ks_max_excess": 1.0, "ppl_w1_max_excess": 10.0},
    }


# -----------------------------------------------------------------------------
# Prefect: the flow run's task runs


def prefect_client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @contextlib.contextmanager
    def opened():
        with temporary_settings(updates={PREFECT_API_URL: api_url}), \
                get_client(sync_client=True) as client:
            yield client

    return opened()


def latest_flow_run_id(api_url: str, since: datetime) -> str | None:
    """The newest flow run started after ``since`` (the benchmark's server runs only its own)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    with prefect_client(api_url) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            sort=FlowRunSort.START_TIME_DESC, limit=1)
    return str(runs[0].id) if runs else None


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def stage_times(api_url: str, flow_run_id: str) -> tuple[dict[str, float], dict]:
    """Per stage, the union of its task runs' [start, end] intervals (seconds); and the flow
    run's state, duration, task run count and the intervals themselves (``intervals``: stage
    -> [(start, end)] in unix seconds)."""
    import uuid

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_client(api_url) as client:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
        task_runs, offset = [], 0
        while True:  # the API pages its answers
            page = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])),
                limit=200, offset=offset)
            task_runs += page
            offset += len(page)
            if len(page) < 200:
                break
    intervals: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES.values()}
    for tr in task_runs:
        if tr.start_time is None:
            continue
        name = tr.name.rsplit("-", 1)[0]  # Prefect names a task run <task name>-<suffix>
        stage = STAGES.get(name, name)
        end = tr.end_time or run.end_time or tr.start_time
        intervals.setdefault(stage, []).append((tr.start_time.timestamp(), end.timestamp()))
    seconds = {stage: round(union_seconds(iv), 2) for stage, iv in intervals.items()}
    flow = {"state": run.state.type.value if run.state else None,
            "flow_run_seconds": (round((run.end_time - run.start_time).total_seconds(), 2)
                                 if run.start_time and run.end_time else None),
            "task_runs": len(task_runs), "intervals": intervals}
    return seconds, flow


# -----------------------------------------------------------------------------
# the warehouse: what the run recorded


def warehouse_facts(root: Path, run_id: str | None) -> dict:
    """Per corpus, documents and scored tokens (table ``corpora``), the metrics' token
    budget and the corpora with a synthetic share estimate (table ``metrics``), of the run
    ``run_id`` (else the latest)."""
    import duckdb

    path = root / "warehouse.duckdb"
    if not path.exists():
        return {}
    with duckdb.connect(str(path), read_only=True) as con:
        if run_id is None:
            row = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
            run_id = row[0] if row else None
        corpora = {name: {"documents": docs, "scored_tokens": tokens} for name, docs, tokens in
                   con.execute("SELECT corpus, documents, tokens FROM corpora WHERE run_id = ? "
                               "ORDER BY corpus", [run_id]).fetchall()}
        budget = con.execute("SELECT max(budget) FROM metrics WHERE run_id = ? AND n IS NOT NULL",
                             [run_id]).fetchone()[0]
        shares = {corpus: value for corpus, value in con.execute(
            "SELECT corpus, value FROM metrics WHERE run_id = ? AND metric = 'synthetic_share'",
            [run_id]).fetchall()}
    return {"run_id": run_id, "corpora": corpora, "metrics_budget_tokens": budget,
            "synthetic_share": shares}


# -----------------------------------------------------------------------------
# one size


class PeakWatcher:
    """Polls the VmHWM of a set of processes every ``interval`` seconds and keeps each one's
    largest reading, so that a process that dies still has the peak it last showed. It also
    keeps every reading of their resident memory now (VmRSS) with its time, so that a peak
    can be put down to the stage that was running (``stage_peaks``)."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.peaks, self.pids = interval, {}, set()
        self.rss: dict[int, list[tuple[float, float]]] = {}  # pid -> [(unix time, MiB)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, *pids: int) -> None:
        self.pids.update(pids)

    def read(self, pid: int) -> float | None:
        value = vm_mb(pid)
        if value is not None:
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), value)
        return self.peaks.get(pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in list(self.pids):
                self.read(pid)
                now = vm_mb(pid, "VmRSS")
                if now is not None:
                    self.rss.setdefault(pid, []).append((time.time(), now))

    def stage_peaks(self, pids, intervals: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
        """Per stage, the largest resident memory read from any of ``pids`` while one of the
        stage's task runs was running (readings once a second: a shorter spike is missed, the
        whole run's peak is VmHWM's)."""
        readings = [r for pid in pids for r in self.rss.get(pid, [])]
        peaks = {}
        for stage, spans in intervals.items():
            inside = [mb for t, mb in readings if any(lo <= t <= hi for lo, hi in spans)]
            if inside:
                peaks[stage] = round(max(inside), 1)
        return peaks

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def worker_torch_threads(client) -> dict[str, int | None]:
    def threads():
        torch = sys.modules.get("torch")
        return torch.get_num_threads() if torch is not None else None

    return client.run(threads)


def remove_tree(path: Path | str, ignore_errors: bool = False) -> None:
    """``shutil.rmtree`` of a work folder that holds releases: their version folders are
    read-only (0555), so each folder is made writable by its owner first (as ``make clean``
    does, ``chmod -R u+w``)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for folder, _, _ in os.walk(path):
            with contextlib.suppress(OSError):
                mode = os.stat(folder).st_mode
                if not mode & stat.S_IWUSR:
                    os.chmod(folder, mode | stat.S_IWUSR)
    shutil.rmtree(path, ignore_errors=ignore_errors)


def run_size(scale: int, args, prior: Path, threshold: float, brown, tokenizer, client,
             api_url: str, dask_address: str, work: Path) -> dict:
    root = work / f"size-{scale}x"
    if root.exists():  # never a previous run's shards, scores, releases or warehouse
        remove_tree(root)
    started = time.perf_counter()
    sides = write_corpus(brown, tokenizer, root / "corpus", scale * args.base_tokens,
                         tuple(args.doc_words), args.shard_docs, args.seed)
    config = root / "flow_scale.yaml"
    import yaml

    config.write_text(yaml.safe_dump(flow_config(root, prior, threshold, args.shard_docs, args.seed),
                                     sort_keys=False))
    prepare_seconds = time.perf_counter() - started
    tokens = sum(s.tokens for s in sides.values())
    print(f"\n{scale}x: {tokens:,} tokens in {sum(s.documents for s in sides.values()):,} documents, "
          f"{sum(s.files for s in sides.values())} files ({prepare_seconds:.1f} s to write); "
          f"restarting the Dask workers", flush=True)

    client.restart(wait_for_workers=True)
    client.wait_for_workers(WORKERS)
    pids = worker_pids(client)
    load_before = load_average()
    (work / "logs").mkdir(exist_ok=True)
    out_file = work / "logs" / f"flow-{scale}x.json"
    log_path = work / "logs" / f"flow-{scale}x.log"
    out_file.unlink(missing_ok=True)
    env = {**os.environ, "PREFECT_API_URL": api_url, "SEMISYNTH_DASK_ADDRESS": dask_address}
    since = datetime.now(UTC)
    start = time.perf_counter()
    status = "finished"
    with PeakWatcher() as watcher, log_path.open("wb") as log:
        watcher.watch(*pids.values())
        child = subprocess.Popen(
            [sys.executable, __file__, "--child-flow", str(config), "--child-out", str(out_file)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        watcher.watch(child.pid)
        try:
            rc = child.wait(timeout=args.size_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            rc = child.wait()
            status = "timed out"
        wall = time.perf_counter() - start
        flow_polled = watcher.peaks.get(child.pid)
        after = worker_pids(client)  # a worker that died was replaced: read both
        worker_peaks = {addr: watcher.read(pid) for addr, pid in pids.items()}
        replaced = {addr: pid for addr, pid in after.items() if pids.get(addr) != pid}
        for addr, pid in replaced.items():
            worker_peaks[f"{addr} (restarted, pid {pid})"] = watcher.read(pid)
    load_after = load_average()
    result = json.loads(out_file.read_text()) if out_file.exists() else {}
    if status == "finished" and (rc != 0 or "error" in result):
        status = "crashed"
    flow_peak = result.get("peak_rss_mb") or flow_polled
    flow_run_id = result.get("flow_run_id") or latest_flow_run_id(api_url, since)
    stages, flow = stage_times(api_url, flow_run_id) if flow_run_id else ({}, {})
    facts = warehouse_facts(root, result.get("run_id"))
    scored = facts.get("corpora", {})
    model_tokens = sum(c["scored_tokens"] or 0 for name, c in scored.items() if name != "mixed")
    entry = {
        "scale": scale,
        "tokens": tokens,
        "documents": sum(s.documents for s in sides.values()),
        "status": status,
        "flow_state": result.get("state") or flow.get("state"),
        "flow_peak_rss_mb": round(flow_peak, 1) if flow_peak else None,
        "worker_peak_rss_mb": round(max(p for p in worker_peaks.values() if p), 1)
        if any(worker_peaks.values()) else None,
        "worker_peaks_rss_mb": {a: round(p, 1) if p else None for a, p in worker_peaks.items()},
        "worker_restarts": len(replaced),
        # the largest worker's resident memory while each stage ran: which job sets the peak
        "worker_stage_rss_mb": watcher.stage_peaks(set(pids.values()) | set(replaced.values()),
                                                   flow.get("intervals", {})),
        "stage_seconds": stages,
        "wall_seconds": round(wall, 2),
        "flow_run_seconds": flow.get("flow_run_seconds"),
        "task_runs": flow.get("task_runs"),
        "score_tokens_per_s": round(model_tokens / stages["score"]) if stages.get("score") else None,
        "metrics_budget_tokens": facts.get("metrics_budget_tokens"),
        "synthetic_share": facts.get("synthetic_share"),  # corpus -> estimate: it ran
        "corpora": scored,
        "released": result.get("released"),
        "blocked": result.get("blocked"),
        "prepare_seconds": round(prepare_seconds, 2),
        "date": since.isoformat(timespec="seconds"),
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "worker_torch_threads": sorted(set(worker_torch_threads(client).values()), key=str),
        "flow_run_id": flow_run_id,
        "flow_log": str(log_path),
    }
    if status != "finished":
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        entry["error"] = result.get("error") or f"exit code {rc}"
        print(f"{scale}x: {status} ({entry['error']}); the flow's log ends:\n" + "\n".join(tail))
    print_entry(entry)
    return entry


def print_entry(e: dict) -> None:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in e["stage_seconds"].items())
    workers = ", ".join(f"{p:.0f}" if p else "?" for p in e["worker_peaks_rss_mb"].values())
    print(f"{e['scale']}x: {e['status']}, flow run {e['flow_state']}; {e['tokens']:,} tokens; "
          f"wall {e['wall_seconds']:.1f} s (flow run {e['flow_run_seconds']} s, {e['task_runs']} task runs)\n"
          f"  stages (s): {stages}\n"
          f"  peak RSS (MiB): flow {e['flow_peak_rss_mb']}, workers {workers}"
          f"{' (' + str(e['worker_restarts']) + ' restarted)' if e['worker_restarts'] else ''}; "
          f"largest worker while each stage ran: "
          f"{', '.join(f'{k} {v:.0f}' for k, v in e['worker_stage_rss_mb'].items()) or '?'}\n"
          f"  scoring {e['score_tokens_per_s']} tokens/s over the score stage, metrics budget "
          f"{e['metrics_budget_tokens']} tokens, share estimated for {sorted(e['synthetic_share'] or [])}, "
          f"released {e['released']}, blocked {e['blocked']}; "
          f"load {e['load_avg_before']} -> {e['load_avg_after']}",
          flush=True)


# -----------------------------------------------------------------------------
# the checks and the report


def checks(sizes: list[dict]) -> dict:
    """Issue 17's "done when", the largest finished size against the smallest."""
    done = [s for s in sizes if s["status"] == "finished"]
    if len(done) < 2:
        return {}
    small, large = done[0], done[-1]
    flow_ratio = large["flow_peak_rss_mb"] / small["flow_peak_rss_mb"]
    ranked = [sorted((p for p in s["worker_peaks_rss_mb"].values() if p), reverse=True)
              for s in (small, large)]
    worker_ratios = [b / a for a, b in zip(*ranked, strict=False)]
    wall_ratio = large["wall_seconds"] / small["wall_seconds"]
    token_ratio = large["tokens"] / small["tokens"]
    return {
        "compared": f"{large['scale']}x vs {small['scale']}x",
        "flow_peak_ratio": round(flow_ratio, 3),
        "flow_peak_ok": flow_ratio <= RATIO_LIMIT,
        "worker_peak_ratios": [round(r, 3) for r in worker_ratios],
        "worker_peaks_ok": bool(worker_ratios) and all(r <= RATIO_LIMIT for r in worker_ratios),
        "wall_ratio": round(wall_ratio, 3),
        "token_ratio": round(token_ratio, 3),
        "wall_ok": wall_ratio <= token_ratio,
    }


def print_summary(sizes: list[dict], check: dict) -> None:
    stage_names = list(dict.fromkeys(k for s in sizes for k in s["stage_seconds"]))
    head = f"{'size':>5}{'tokens':>12}{'wall s':>9}{'flow MiB':>10}{'worker MiB':>12}"
    print("\n" + head + "".join(f"{n:>9}" for n in stage_names))
    for s in sizes:
        line = (f"{s['scale']:>4}x{s['tokens']:>12,}{s['wall_seconds']:>9.1f}"
                f"{s['flow_peak_rss_mb'] or 0:>10.0f}{s['worker_peak_rss_mb'] or 0:>12.0f}")
        print(line + "".join(f"{s['stage_seconds'].get(n, 0):>9.1f}" for n in stage_names)
              + ("" if s["status"] == "finished" else f"  {s['status']}"))
    if not check:
        print("\ndone when: needs two finished sizes")
        return
    yes = {True: "yes", False: "NO"}
    print(f"\ndone when ({check['compared']}):\n"
          f"  flow peak RSS ratio {check['flow_peak_ratio']:.2f} (<= {RATIO_LIMIT}): {yes[check['flow_peak_ok']]}\n"
          f"  worker peak RSS ratios {', '.join(f'{r:.2f}' for r in check['worker_peak_ratios'])} "
          f"(each <= {RATIO_LIMIT}): {yes[check['worker_peaks_ok']]}\n"
          f"  wall time ratio {check['wall_ratio']:.2f} <= token ratio {check['token_ratio']:.2f}: "
          f"{yes[check['wall_ok']]}")


# -----------------------------------------------------------------------------
# the flow's process


def child_flow(config: str, out: str) -> None:
    """Run the nightly flow on ``config``; write its outcome and this process's peak memory
    to ``out`` as the flow returns (or raises)."""
    outcome: dict = {}
    try:
        from semisynth.flows.nightly import run

        result = run(config)
        outcome = {"state": result.get("state"), "flow_run_id": result.get("flow_run_id"),
                   "run_id": result.get("run_id"), "blocked": result.get("blocked"),
                   "released": sorted(result.get("releases") or {})}
    except BaseException as exc:
        outcome = {"error": repr(exc)}
        raise
    finally:
        outcome["peak_rss_mb"] = vm_mb()
        Path(out).write_text(json.dumps(outcome))


# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16],
                        help="multiples of --base-tokens, one flow run each")
    parser.add_argument("--base-tokens", type=int, default=625_000,
                        help="tokens (prior tokenizer) of the two file-backed corpora at 1x")
    parser.add_argument("--doc-words", type=int, nargs=2, default=[400, 2000], metavar=("MIN", "MAX"),
                        help="words per document, drawn uniformly")
    parser.add_argument("--shard-docs", type=int, default=50, help="documents per file and shard")
    parser.add_argument("--vocab", type=int, default=4096, help="the tiny prior's BPE vocabulary")
    parser.add_argument("--hidden", type=int, default=64, help="the tiny prior's hidden size")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--work", default=None, help="folder for everything (default: a temporary one)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each size's data root (default: deleted once measured, "
                             "unless the size failed; a temporary --work folder is deleted at the end)")
    parser.add_argument("--assets", default=None,
                        help="where the Brown Corpus is cached (default: $SEMISYNTH_TEST_ASSETS, "
                             "var/test-assets, else the data root)")
    parser.add_argument("--size-timeout", type=float, default=None,
                        help="seconds a size's flow may run before it is killed and recorded as timed out")
    parser.add_argument("--dry-run", action="store_true",
                        help="one size of 24,000 tokens, short documents (about a minute)")
    parser.add_argument("--child-flow", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.sizes, args.base_tokens, args.doc_words, args.shard_docs = [1], 24_000, [60, 240], 16
    args.sizes = sorted(set(args.sizes))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child_flow:
        child_flow(args.child_flow, args.child_out)
        return
    tmp = None
    if args.work:
        work = Path(args.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="semisynth-flow-scale-")
        work = Path(tmp)
    # set before anything imports Prefect or starts a process: the server, the workers and
    # the flow's process share them
    os.environ.update({"PREFECT_HOME": str(work / "prefect-home"),
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "SEMISYNTH_TORCH_THREADS": "1"})
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("SEMISYNTH_DASK_ADDRESS", None)
    try:
        report(args, work)
    finally:
        if tmp and not args.keep:
            remove_tree(tmp, ignore_errors=True)


def report(args, work: Path) -> None:
    host = host_facts()
    print(f"host: {host['machine']}, {host['cpus']} cores ({host['cpu_model']}), flags "
          f"{' '.join(host['cpu_flags'])}, {host['memory_gib']} GiB; load {load_average()}; "
          f"work folder {work}", flush=True)
    assets = Path(args.assets) if args.assets else assets_root()
    brown = brown_documents(assets)
    texts = [text for _, text in brown]
    prior = work / "prior"
    started = time.perf_counter()
    build_prior(prior, texts, args.vocab, args.hidden, args.seed)
    threshold = revise_threshold(prior, texts[:: max(1, len(texts) // 24)][:24], REVISE_PERCENTILE)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prior).backend_tokenizer
    rate = scoring_rate(prior, assets, texts[:30 if not args.dry_run else 4], threshold)
    print(f"prior: byte-level BPE of {args.vocab} tokens trained on Brown, Llama {PRIOR_LAYERS} layers, "
          f"hidden {args.hidden}, context {CONTEXT}, random weights (seed {args.seed}); built in "
          f"{time.perf_counter() - started:.1f} s. Edit threshold {threshold:.3g} (p(x_i) percentile "
          f"{REVISE_PERCENTILE:g}). Score+edit engine, 1 thread, {rate['precision']}: "
          f"{rate['tokens_per_s']:,} tokens/s on {rate['tokens']:,} tokens, "
          f"{rate['revised_share']:.2%} of positions redrawn, {rate['edited_share']:.2%} changed",
          flush=True)

    from distributed import Client, LocalCluster

    from semisynth.flows.lifecycle import PrefectServer

    server = PrefectServer(free_port(), work / "prefect-server.log")
    started = time.perf_counter()
    server.start()
    print(f"Prefect server started in {time.perf_counter() - started:.1f} s", flush=True)
    sizes: list[dict] = []
    try:
        with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                          dashboard_address=None,
                          env={"SEMISYNTH_TORCH_THREADS": "1", "PREFECT_API_URL": server.api_url,
                               "PREFECT_HOME": os.environ["PREFECT_HOME"],
                               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                               # the workers share this script's terminal: their task logs
                               # go to the Prefect API (and the flow's log), not here
                               "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}) as cluster, \
                Client(cluster) as client:
            print(f"Prefect server {server.api_url}; Dask {cluster.scheduler_address}: {WORKERS} "
                  "worker processes, 1 thread each, SEMISYNTH_TORCH_THREADS=1", flush=True)
            for scale in args.sizes:
                entry = run_size(scale, args, prior, threshold, brown, tokenizer, client,
                                 server.api_url, cluster.scheduler_address, work)
                sizes.append(entry)
                if entry["status"] != "finished":
                    break
                if not args.keep:
                    remove_tree(work / f"size-{scale}x", ignore_errors=True)
    finally:
        server.stop()
    check = checks(sizes)
    print_summary(sizes, check)
    print(json.dumps({
        "sizes": sizes, "checks": check, "host": host, "base_tokens": args.base_tokens,
        "doc_words": args.doc_words, "shard_docs": args.shard_docs, "dask_workers": WORKERS,
        "torch_threads": 1, "edit_threshold": threshold,
        "prior": {"vocab": args.vocab, "hidden": args.hidden, "layers": PRIOR_LAYERS,
                  "context": CONTEXT, "scoring": rate},
    }))


if __name__ == "__main__":
    main()
