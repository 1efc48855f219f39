"""Score and edit documents with the prior: one forward pass, the edits on the tensors.

For every position i >= 1 of a document the prior gives p(x_i | x_<i); the document's
perplexity is exp(mean NLL) over those positions. An edit strategy
(``semisynth.tasks.strategies``) decides every edit from that same pass; ToEdit's
(arXiv 2412.14689) are built in:
  up_revise           p(x_i) > threshold: redraw x_i from the top-k, softmax(logp / beta)
  low_drop_up_revise  as above, and drop x_i where p(x_i) < low_threshold
  filtering           only drop x_i where p(x_i) < low_threshold
The draw for position i of document d uses a uniform number hashed from (seed, d, i), so
an edit does not depend on batching, padding or the device, and a re-run reproduces it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from semisynth.config import MAX_DOC_TOKENS, EditConfig, PriorConfig
from semisynth.progress import Progress
from semisynth.settings import read_settings
from semisynth.strategy_registry import EditStrategy
from semisynth.tasks.device import (
    CPU_COMPILED_SPEEDUP,
    EngineChoices,
    ModelShape,
    cuda_free_bytes,
    engine_choices,
    plan_batches,
    round_up,
    width_bucket,
)
from semisynth.tasks.prior import Prior

log = logging.getLogger(__name__)

_MASK63 = (1 << 63) - 1
# A text longer than its token limit is tokenized from a prefix of this many characters a
# token (English averages under 5), doubled until it yields the limit: a 10 MB document
# then costs a prefix's tokenization, not seconds of native code that Ctrl-C cannot stop.
PREFIX_CHARS_PER_TOKEN = 8
_WORD_END = re.compile(r"\S(?=[ \t])")  # the last character of a word that a space follows


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= (1 << 63) else value


_GOLDEN, _MIX1, _MIX2 = (_signed64(v) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


@dataclass
class DocResult:
    doc_id: str
    token_ids: np.ndarray  # the scored document (truncated to max_tokens if set)
    edited_ids: np.ndarray
    scored_tokens: int  # positions 1..L-1
    nll_sum: float
    revised_tokens: int  # positions chosen for a redraw (p > threshold)
    edited_tokens: int  # positions whose token changed
    dropped_tokens: int
    revised_mask: np.ndarray | None = None  # per position: chosen for a redraw
    truncated: bool = False  # cut to max_doc_tokens: its later tokens are not scored

    @property
    def ppl(self) -> float | None:
        """exp(mean NLL) over the scored positions; None for a document of fewer than 2
        tokens, which has none to score (not NaN: it would reach metrics and JSON)."""
        return float(np.exp(self.nll_sum / self.scored_tokens)) if self.scored_tokens else None


def doc_key(seed: int, doc_id: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & _MASK63


def position_uniforms(keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers from (document key, position) by a splitmix64-style hash.

    int64 arithmetic wraps in torch; the right shifts are made logical by masking."""
    x = keys * _GOLDEN + positions * _MIX1 + _MIX2
    for shift, mult in ((30, _MIX1), (27, _MIX2)):
        x = (x ^ ((x >> shift) & ((1 << (64 - shift)) - 1))) * mult
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return ((x >> 11) & ((1 << 53) - 1)).double() / float(1 << 53)



@dataclass
class Segment:
    """A forward-pass input: tokens [start, stop) of a document; targets [first, stop)."""

    doc: int
    start: int
    first: int
    stop: int


def plan_segments(lengths: Sequence[int], window: int, overlap: int) -> list[Segment]:
    """Cut documents into windows of at most `window` tokens so that every position
    i >= 1 is a target exactly once; each window after the first carries up to
    `overlap` earlier tokens as context only."""
    if window < 2 or not 1 <= overlap < window:
        raise ValueError(f"need window >= 2 and 1 <= overlap < window, got {window}, {overlap}")
    stride = window - overlap
    segments = []
    for doc, length in enumerate(lengths):
        first = 1
        while first < length:
            stop = min(first + stride, length) if first > 1 else min(window, length)
            segments.append(Segment(doc, max(0, stop - window), first, stop))
            first = stop
    return segments


def batches_by_budget(segments: list[Segment], batch_tokens: int,
                      bucket: Callable[[int], int] | None = None) -> list[list[Segment]]:
    """Length-bucketed batches: sorted by length, so padding stays small. With ``bucket``
    (width -> padded width) a batch's width is its longest segment's bucket, so that a full
    batch of a width always has the same shape: batch_tokens // width rows."""
    ordered = sorted(segments, key=lambda s: s.stop - s.start, reverse=True)
    batches, current = [], []
    for seg in ordered:
        width = (current[0].stop - current[0].start) if current else seg.stop - seg.start
        if bucket is not None:
            width = bucket(width)
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(seg)
    if current:
        batches.append(current)
    return batches


def text_prefix(text: str, chars: int) -> str:
    """At most ``chars`` characters of ``text``, ending at the end of a word that a space or
    tab follows if one ends in the last eighth. Tokenizers split text at spaces before
    anything else (byte-level BPE, SentencePiece), so the prefix's tokens are the first
    tokens of the whole text; only where no word ends there (code, CJK) does the cut fall
    inside a run of characters, whose tokens may then differ."""
    if len(text) <= chars:
        return text
    window = _WORD_END.finditer(text, chars - max(chars // 8, 1), chars)
    return text[: max((m.end() for m in window), default=chars)]


class Scorer:
    """Scores and edits lists of documents with one prior. Each document is cut to its
    first ``max_tokens`` tokens (the official ToEdit code's truncation) and in any case to
    ``max_doc_tokens`` (a bound against huge documents: a warning names each one cut).

    A batch's inputs travel to the device in one copy and its results (NLL, new tokens,
    revised and dropped) come back in one; on CUDA nothing in between waits for the host
    (dense decisions) and the next batch is queued before the host reads the last one back
    (``EngineChoices``).
    ``batch_tokens='auto'`` and ``compile='auto'`` are resolved here, on the worker that
    holds the device (``tasks.device``)."""

    def __init__(
        self,
        prior: Prior,
        edit: EditConfig | EditStrategy | None,
        seed: int = 0,
        max_tokens: int | None = None,
        batch_tokens: int | str = "auto",
        window: int | None = None,
        logits_chunk: int | None = None,
        max_doc_tokens: int | None = MAX_DOC_TOKENS,
        compile: bool | str = "auto",
        choices: EngineChoices | None = None,
        expected_documents: int | None = None,
    ):
        self.strategy = as_strategy(edit)
        if self.strategy is not None and self.strategy.top_k > prior.vocab_size:
            raise ValueError(f"top_k {self.strategy.top_k} is larger than the prior's vocabulary "
                             f"({prior.vocab_size} tokens)")
        self.prior, self.edit, self.seed = prior, edit, seed
        self.max_tokens, self.max_doc_tokens = max_tokens, max_doc_tokens
        self.window = min(window or prior.context, prior.context)
        kind = prior.device.type
        self.choices = choices or engine_choices(kind, compile)
        cuda = kind == "cuda"
        plan = plan_batches(
            kind, cuda_free_bytes(prior.device) if cuda else 0,
            ModelShape.of(prior.model.config) if cuda else None,
            next(prior.model.parameters()).element_size(), batch_tokens)
        self.batch_tokens = plan.batch_tokens
        self.logits_chunk = logits_chunk or plan.logits_chunk
        self.compile_seconds = 0.0  # first batches of new compiled shapes (the compiles)
        # eager seconds before the dynamic body is compiled (the ski-rental threshold)
        self.compile_after = (None if self.choices.compile_after is None else
                              prior.expected_compile_seconds(self.choices.compile_after))
        # the documents this Scorer is given in all, where the caller knows: then 'auto'
        # compiles on a CPU only if the eager time it saves on what is left pays the compile
        self.expected_documents = expected_documents
        self._planned_docs = self._planned_tokens = self._launched_tokens = 0
        self._eager_tokens, self._eager_seconds = 0, 0.0
        if cuda:
            log.info("score+edit on %s: batches of %d tokens, head in chunks of %d rows, "
                     "compile %s", prior.device, self.batch_tokens, self.logits_chunk,
                     self.choices.compile)
        else:
            # every core, unless several worker processes share this host and must split
            # them (the LocalCluster sets SEMISYNTH_TORCH_THREADS per worker, so this
            # process's own settings hold it): oversubscribed torch threads slow every worker
            threads = read_settings().torch_threads
            torch.set_num_threads(threads or os.cpu_count() or 1)

    @classmethod
    def from_config(cls, prior: Prior, cfg: PriorConfig, edit: EditConfig | None,
                    seed: int, expected_documents: int | None = None) -> Scorer:
        """The Scorer a validated PriorConfig describes."""
        return cls(prior, edit, seed=seed, max_tokens=cfg.max_tokens,
                   batch_tokens=cfg.batch_tokens, window=cfg.window,
                   max_doc_tokens=cfg.max_doc_tokens, compile=cfg.compile,
                   expected_documents=expected_documents)

    def _encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        enc = self.prior.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(e, dtype=np.int64) for e in enc]

    def tokenize(self, texts: Sequence[str]) -> tuple[list[np.ndarray], list[bool]]:
        """Each text's token ids, cut to the token limit, and whether max_doc_tokens (not
        max_tokens) cut it. A long text is tokenized from a prefix (``text_prefix``) only,
        grown until it holds more tokens than the limit."""
        limits = [n for n in (self.max_tokens, self.max_doc_tokens) if n is not None]
        if not limits:
            return self._encode(texts), [False] * len(texts)
        limit = min(limits)
        bounded = self.max_doc_tokens == limit and self.max_tokens != limit
        ids: list[np.ndarray | None] = [None] * len(texts)
        cut = [False] * len(texts)
        todo, chars = list(range(len(texts))), limit * PREFIX_CHARS_PER_TOKEN
        while todo:
            heads = [text_prefix(texts[i], chars) for i in todo]
            left = []
            for i, head, enc in zip(todo, heads, self._encode(heads), strict=True):
                whole = len(head) == len(texts[i])
                if whole or len(enc) >= limit:
                    # a cut prefix has fewer tokens than the whole text, whose rest starts
                    # with a space: it was longer than the limit
                    ids[i], cut[i] = enc[:limit], len(enc) > limit or not whole
                else:
                    left.append(i)
            todo, chars = left, chars * 2
        return ids, [c and bounded for c in cut]

    def score(
        self,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        progress: Progress | None = None,
    ) -> list[DocResult]:
        """Score (and edit, with an EditConfig) documents; ``progress.advance(0, also=tokens)``
        after each forward batch, with the positions it scored, so that a long document, many windows
        of the prior's context, shows its progress too."""
        return self.run(self.plan(doc_ids, *self.tokenize(texts)), progress)

    def plan(self, doc_ids: Sequence[str], token_ids: list[np.ndarray],
             truncated: list[bool]) -> Planned:
        """The host's part before the device's: tokenized documents cut into windows and
        forward batches, each batch's inputs assembled (``tokenize`` gives the arguments).
        Runs on any thread: ``score_shard`` plans the next documents while these run."""
        for doc_id, cut in zip(doc_ids, truncated, strict=True):
            if cut:
                log.warning("document %r has more than %d tokens: only its first %d are "
                            "scored and edited (prior.max_doc_tokens)", str(doc_id),
                            self.max_doc_tokens, self.max_doc_tokens)
        keys = [doc_key(self.seed, d) for d in doc_ids]
        segments = plan_segments([len(t) for t in token_ids], self.window, max(1, self.window // 4))
        static = self.choices.compile and not self.choices.dynamic
        bucket = functools.partial(width_bucket, window=self.window) if static else None
        batches = [self._assemble(b, token_ids, keys)
                   for b in batches_by_budget(segments, self.batch_tokens, bucket)]
        self._planned_docs += len(doc_ids)
        self._planned_tokens += sum(b.targets for b in batches)
        return Planned([str(d) for d in doc_ids], token_ids, truncated, batches)

    def run(self, planned: Planned, progress: Progress | None = None) -> list[DocResult]:
        """The device's part: every batch of ``planned`` through the prior, ``depth`` of them
        in flight; ``progress.advance(0, also=tokens)`` after each batch is read back (the
        positions it scored; the caller counts the documents)."""
        token_ids = planned.token_ids
        nll = [np.zeros(max(len(t), 1), dtype=np.float64) for t in token_ids]
        new_ids = [t.copy() for t in token_ids]
        revised = [np.zeros(len(t), dtype=bool) for t in token_ids]
        dropped = [np.zeros(len(t), dtype=bool) for t in token_ids]

        def store(flight: _InFlight) -> None:
            out, offset = flight.read(), 0
            for seg in flight.batch.segments:
                n = seg.stop - seg.first
                span, at = slice(seg.first, seg.stop), slice(offset, offset + n)
                nll[seg.doc][span] = out[0, at]
                new_ids[seg.doc][span] = out[1, at]
                revised[seg.doc][span] = out[2, at] != 0
                dropped[seg.doc][span] = out[3, at] != 0
                offset += n
            if progress:
                progress.advance(0, also=flight.batch.targets)

        flying: deque[_InFlight] = deque()
        for batch in planned.batches:
            flying.append(self._launch(batch))
            if len(flying) > self.choices.depth:
                store(flying.popleft())
        while flying:
            store(flying.popleft())
        results = []
        for i, doc_id in enumerate(planned.doc_ids):
            ids = token_ids[i]
            kept = new_ids[i][~dropped[i]]
            results.append(
                DocResult(
                    doc_id=doc_id,
                    token_ids=ids,
                    edited_ids=kept,
                    scored_tokens=max(len(ids) - 1, 0),
                    nll_sum=float(nll[i][1:].sum()),
                    revised_tokens=int(revised[i].sum()),
                    edited_tokens=int((new_ids[i] != ids)[~dropped[i]].sum()),
                    dropped_tokens=int(dropped[i].sum()),
                    revised_mask=revised[i],
                    truncated=planned.truncated[i],
                )
            )
        return results

    def _assemble(self, batch: list[Segment], token_ids: list[np.ndarray],
                  keys: list[int]) -> HostBatch:
        """A batch's int64 inputs in one tensor (pinned on CUDA, for an asynchronous copy):
        the token rows, right-padded; for every scored position the flat index of the row
        position whose logits predict it, the target token, the document key and the
        position in the document (these two seed the redraw)."""
        longest = max(s.stop - s.start for s in batch)
        static = self.choices.compile and not self.choices.dynamic
        width = width_bucket(longest, self.window) if static else longest
        compiled = static and len(batch) == self.batch_tokens // width
        if not compiled:  # eagerly, padded only to the device's shape step (<= the window)
            width = min(round_up(longest, self.choices.shape_step), max(longest, self.window))
        rows, n = len(batch), sum(s.stop - s.first for s in batch)
        packed = np.zeros(rows * width + 4 * n, dtype=np.int64)
        inputs = packed[: rows * width].reshape(rows, width)
        index, targets, doc_keys, positions = packed[rows * width:].reshape(4, n)
        at = 0
        for row, seg in enumerate(batch):
            ids, m = token_ids[seg.doc], seg.stop - seg.first
            inputs[row, : seg.stop - seg.start] = ids[seg.start : seg.stop]
            span = slice(at, at + m)
            # the logits at row position j predict the token at j + 1
            index[span] = row * width + np.arange(seg.first - 1 - seg.start, seg.stop - 1 - seg.start)
            targets[span] = ids[seg.first : seg.stop]
            doc_keys[span] = _signed64(keys[seg.doc])
            positions[span] = np.arange(seg.first, seg.stop)
            at += m
        tensor = torch.from_numpy(packed)
        if self.prior.device.type == "cuda":
            tensor = tensor.pin_memory()
        return HostBatch(batch, rows, width, n, compiled, tensor)

    @torch.inference_mode()
    def _launch(self, batch: HostBatch) -> _InFlight:
        """Queue a batch's work on the device: one copy in, the body, the head in chunks,
        ToEdit, one copy out. Nothing here waits for the device, except the first batch of
        a new compiled shape, whose compile is timed."""
        device, cuda = self.prior.device, self.prior.device.type == "cuda"
        shape = (batch.rows, batch.width)
        dynamic = self._dynamic_due(batch)
        self._launched_tokens += batch.targets
        first_compile = ((batch.compiled and shape not in self.prior.compiled_shapes)
                         or (dynamic and not self.prior.dynamic_compiled))
        if first_compile or not (cuda or dynamic):  # the CPU's eager time is counted too
            if cuda:
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        packed = batch.packed.to(device, non_blocking=cuda)
        cells, n = batch.rows * batch.width, batch.targets
        inputs = packed[:cells].view(batch.rows, batch.width)
        index, targets, doc_keys, positions = packed[cells:].view(4, n)
        model = self.prior.model
        if batch.compiled:
            body = self.prior.compiled_body
        else:
            body = self.prior.dynamic_body if dynamic else model.base_model
        # no attention mask: rows are right-padded and attention is causal, so no real
        # position sees a pad, and the attention kernels keep their causal fast path
        try:
            hidden = body(input_ids=inputs, use_cache=False).last_hidden_state
        except Exception as exc:  # noqa: BLE001 - any failure of a CPU compile: run eagerly
            if not (dynamic and first_compile):
                raise
            if _interrupted(exc):  # Ctrl-C during the compile, wrapped by dynamo: not a failure
                raise KeyboardInterrupt from exc
            # 'auto' now compiles on hosts that never did (a CPU without a C++ compiler,
            # say): a failed compile costs its time once, not the run
            log.warning("torch.compile of the prior failed, scoring eagerly: %s", exc)
            self.prior.compile_failed = True
            dynamic = first_compile = False
            hidden = model.base_model(input_ids=inputs, use_cache=False).last_hidden_state
        if not (cuda or dynamic or first_compile):  # a CPU call is synchronous: timed as is
            seconds = time.perf_counter() - started
            self.prior.eager_seconds += seconds
            self._eager_seconds += seconds
            self._eager_tokens += batch.targets
        hidden = hidden.flatten(0, 1).index_select(0, index)
        out = torch.empty((4, n), dtype=torch.float64, device=device)
        head = model.get_output_embeddings()
        for lo in range(0, n, self.logits_chunk):
            at = slice(lo, lo + self.logits_chunk)
            if self.choices.dense:
                top_k = self.strategy.top_k if self.strategy else 0
                if self.choices.compile:
                    token_logp, top_logits, top_idx = compiled_head(top_k)(
                        head, hidden[at], targets[at])
                else:
                    token_logp, top_logits, top_idx = head_log_probs(
                        head, hidden[at], targets[at], top_k, self.choices.shape_step)
                chosen, revise, dropping = decisions_from_top(
                    token_logp, top_logits, top_idx, targets[at], doc_keys[at], positions[at],
                    self.strategy)
            else:
                chosen, revise, dropping, token_logp = sparse_head_decisions(
                    head, hidden[at], targets[at], doc_keys[at], positions[at], self.strategy,
                    self.choices.shape_step, self.choices.vocab_chunk)
            out[0, at] = -token_logp.double()
            out[1, at] = chosen
            out[2, at] = revise
            out[3, at] = dropping
        if first_compile:
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
            self.compile_seconds += seconds
            if dynamic:
                self.prior.dynamic_compiled = True
                self.prior.record_compile_seconds(seconds)
                log.info("compiled the prior for any batch shape: %.1f s (first batch, %d x "
                         "%d tokens, included)", seconds, *shape)
            else:
                self.prior.compiled_shapes.add(shape)
                log.info("compiled the prior for batches of %d x %d tokens: %.1f s", *shape,
                         seconds)
        if not cuda:
            return _InFlight(batch, out, None)
        host = torch.empty((4, n), dtype=torch.float64, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _InFlight(batch, host, done)


    def _dynamic_due(self, batch: HostBatch) -> bool:
        """Whether this batch goes through the dynamic compiled body: with ``dynamic``
        choices, a batch of two rows or more (one row would be a compile of its own), unless
        its compile failed, and once compiling pays (``compile_pays``)."""
        if not self.choices.dynamic or batch.rows < 2 or self.prior.compile_failed:
            return False
        return self.compile_after is None or self.prior.dynamic_compiled or self.compile_pays()

    def tokens_to_come(self) -> float | None:
        """The positions still to score, this batch's included, where ``expected_documents``
        is known: the planned ones not yet run, and the documents not yet planned at the
        planned ones' mean. None without ``expected_documents`` or before the first plan."""
        if self.expected_documents is None or not self._planned_docs:
            return None
        unplanned = max(self.expected_documents - self._planned_docs, 0)
        return (self._planned_tokens - self._launched_tokens
                + unplanned * self._planned_tokens / self._planned_docs)

    def compile_pays(self) -> bool:
        """With the work left known (``tokens_to_come``): whether the eager seconds the
        compiled body saves on it (CPU_COMPILED_SPEEDUP, at this process's measured eager
        rate) exceed ``compile_after``, the expected compile time; the first batch runs
        eagerly to measure the rate. Without it: the ski-rental rule, once the prior's eager
        seconds reach ``compile_after``."""
        left = self.tokens_to_come()
        if left is None:
            return self.prior.eager_seconds >= self.compile_after
        if not self._eager_seconds:
            return False
        eager_left = left * self._eager_seconds / self._eager_tokens
        return eager_left * (1 - 1 / CPU_COMPILED_SPEEDUP) > self.compile_after


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in ``exc``'s chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass
class HostBatch:
    """One forward batch assembled on the host (``Scorer._assemble``)."""

    segments: list[Segment]
    rows: int
    width: int  # padded to a compiled width, or the longest segment's
    targets: int  # scored positions: the sum of the segments' stop - first
    compiled: bool  # a full batch of a bucketed width: through the compiled body
    packed: torch.Tensor  # int64: rows x width tokens, then index, targets, keys, positions


@dataclass
class Planned:
    """Documents ready for the device (``Scorer.plan``)."""

    doc_ids: list[str]
    token_ids: list[np.ndarray]
    truncated: list[bool]
    batches: list[HostBatch]


@dataclass
class _InFlight:
    """A launched batch: its results land in ``out`` (4 x N float64: NLL, new token,
    revised, dropped) once ``done`` (a CUDA event; None on the CPU) has fired."""

    batch: HostBatch
    out: torch.Tensor
    done: torch.cuda.Event | None

    def read(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()  # the batch's one wait for the device
        return self.out.numpy()


def pad_rows(hidden: torch.Tensor, step: int) -> torch.Tensor:
    """``hidden`` with zero rows added up to a multiple of ``step``
    (``EngineChoices.shape_step``): the head's matmuls see a bounded set of shapes."""
    rows = hidden.shape[0]
    padded = round_up(rows, step)
    if padded == rows:
        return hidden
    return torch.cat([hidden, hidden.new_zeros(padded - rows, hidden.shape[1])])


def head_rows(head: torch.nn.Module, hidden: torch.Tensor, step: int) -> torch.Tensor:
    """The head's logits for ``hidden``'s rows, computed on rows padded by ``pad_rows``
    and cut back."""
    return head(pad_rows(hidden, step))[: hidden.shape[0]]


def head_log_probs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                   top_k: int, step: int = 1,
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The head with its log-normaliser for a chunk of positions: each target's log-prob
    and (top_k > 0) the top-k logits and their token ids. Compiled on CUDA, where the
    float32 logits then never leave the kernels that reduce them. ``step``: as head_rows."""
    logits = head_rows(head, hidden, step).float()
    log_norm = torch.logsumexp(logits, dim=-1)
    token_logp = logits.gather(1, targets[:, None]).squeeze(1) - log_norm
    if not top_k:
        return token_logp, None, None
    top_logits, top_idx = logits.topk(top_k, dim=-1)
    return token_logp, top_logits, top_idx


def vocab_chunked_log_probs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                            vocab_chunk: int, step: int = 1) -> torch.Tensor:
    """Each row's target log-prob, the head computed over ``vocab_chunk`` columns of the
    vocabulary at a time: a chunk's logits are reduced to its logsumexp (in float32) and
    the targets that fall in it while they are still in the cache, and the log-normaliser
    is the logsumexp of the chunks' ones. The full-vocabulary float32 logits, and the pass
    over them in memory, are never made: on 2 CPU cores that pass cost about 40% of the
    head (8 x 512 positions of the default prior: 0.86 s against 0.54 s). ``step``: the
    rows are padded by ``pad_rows``, as in head_rows."""
    rows = hidden.shape[0]
    hidden = pad_rows(hidden, step)
    weight, bias = head.weight, head.bias
    norms, target_logits = [], torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    for lo in range(0, weight.shape[0], vocab_chunk):
        hi = min(lo + vocab_chunk, weight.shape[0])
        logits = torch.nn.functional.linear(
            hidden, weight[lo:hi], None if bias is None else bias[lo:hi])[:rows].float()
        norms.append(torch.logsumexp(logits, dim=-1))
        inside = (targets >= lo) & (targets < hi)
        picked = logits.gather(1, (targets - lo).clamp(0, hi - lo - 1)[:, None]).squeeze(1)
        target_logits = torch.where(inside, picked, target_logits)
    return target_logits - torch.logsumexp(torch.stack(norms, dim=1), dim=1)


def sparse_head_decisions(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    doc_keys: torch.Tensor,
    positions: torch.Tensor,
    edit: EditConfig | EditStrategy | None,
    step: int,
    vocab_chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CPU's head and the edit strategy for a chunk of positions: (new token ids,
    revised, dropped, target log-probs). With ``vocab_chunk`` (and a linear head) the
    log-probs come from ``vocab_chunked_log_probs`` and the full logits are computed again
    only for the rows chosen for a redraw (a few percent), for their top-k; else from the
    full logits (``toedit_decisions``). Both make the same decisions from the same log-probs."""
    strategy = as_strategy(edit)
    if vocab_chunk and isinstance(head, torch.nn.Linear):
        token_logp = vocab_chunked_log_probs(head, hidden, targets, vocab_chunk, step)
        if strategy is None:
            no = torch.zeros_like(targets, dtype=torch.bool)
            return targets, no, no, token_logp
        revise, dropping = strategy.select(token_logp)
        chosen = _drawn_where_revised(strategy, revise, targets, doc_keys, positions,
                                      lambda rows: head_rows(head, hidden[rows], step).float())
        return chosen, revise, dropping, token_logp
    logits = head_rows(head, hidden, step).float()
    # log p = logit - logsumexp: no second vocabulary-sized tensor per chunk
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    token_logp = logits.gather(1, targets[:, None]).squeeze(1) - log_norm.squeeze(1)
    chosen, revise, dropping = toedit_decisions(logits, targets, doc_keys, positions, strategy,
                                                log_norm)
    return chosen, revise, dropping, token_logp


@functools.cache
def compiled_head(top_k: int) -> Callable:
    """``head_log_probs`` compiled for one top_k (a constant of the graph, not an input).
    dynamic: a batch's last chunk has any number of rows; one compile serves them all."""

    def head_top(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor):
        return head_log_probs(head, hidden, targets, top_k)

    return torch.compile(head_top, dynamic=True)


def as_strategy(edit: EditConfig | EditStrategy | None) -> EditStrategy | None:
    """The strategy an EditConfig describes (built), or the strategy itself, or None."""
    return edit.build() if isinstance(edit, EditConfig) else edit


def decisions_from_top(
    token_logp: torch.Tensor,
    top_logp: torch.Tensor | None,
    top_idx: torch.Tensor | None,
    targets: torch.Tensor,
    doc_keys: torch.Tensor,
    positions: torch.Tensor,
    edit: EditConfig | EditStrategy | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The strategy's decisions from each position's target log-prob and top-k, without a
    data-dependent host sync: a draw for every row, kept where the row is revised
    (``torch.where``)."""
    strategy = as_strategy(edit)
    if strategy is None:
        no = torch.zeros_like(targets, dtype=torch.bool)
        return targets, no, no
    revise, dropping = strategy.select(token_logp)
    if not strategy.top_k:
        return targets, revise, dropping
    drawn = strategy.draw(top_logp, top_idx, targets, position_uniforms(doc_keys, positions))
    return torch.where(revise, drawn, targets), revise, dropping


def toedit_decisions(
    logp: torch.Tensor,
    targets: torch.Tensor,
    doc_keys: torch.Tensor,
    positions: torch.Tensor,
    edit: EditConfig | EditStrategy | None,
    log_norm: torch.Tensor | None = None,
    dense: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An edit strategy applied to a block of positions. logp: [N, V] log-probabilities,
    or logits with their log-normalizer log_norm [N, 1]; targets: [N] the actual tokens;
    doc_keys, positions: [N] what seeds each draw. Returns (new token ids, revised,
    dropped). ``dense``: the top-k of every row and ``decisions_from_top`` (no host sync,
    for a GPU); else the top-k of the revised rows only (cheaper where a sync is free: the
    CPU). Both give the same decisions."""
    strategy = as_strategy(edit)
    no = torch.zeros_like(targets, dtype=torch.bool)
    if strategy is None:
        return targets, no, no
    token_logp = logp.gather(1, targets[:, None]).squeeze(1)
    if log_norm is not None:
        token_logp = token_logp - log_norm.squeeze(1)
    if dense:
        top_logp, top_idx = logp.topk(strategy.top_k, dim=-1) if strategy.top_k else (None, None)
        return decisions_from_top(token_logp, top_logp, top_idx, targets, doc_keys, positions,
                                  strategy)
    revise, dropping = strategy.select(token_logp)
    return _drawn_where_revised(strategy, revise, targets, doc_keys, positions,
                                lambda rows: logp[rows]), revise, dropping


def _drawn_where_revised(strategy: EditStrategy, revise: torch.Tensor, targets: torch.Tensor,
                         doc_keys: torch.Tensor, positions: torch.Tensor,
                         scores_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``targets`` with the revised rows redrawn; ``scores_of(mask)`` gives those rows'
    logits or log-probs [M, V], computed only when a row is revised."""
    chosen = targets.clone()
    if strategy.top_k and revise.any():
        top_logp, top_idx = scores_of(revise).topk(strategy.top_k, dim=-1)
        chosen[revise] = strategy.draw(top_logp, top_idx, targets[revise],
                                       position_uniforms(doc_keys[revise], positions[revise]))
    return chosen
