"""Score and edit documents with the prior: one forward pass, ToEdit on the tensors.

For every position i >= 1 of a document the prior gives p(x_i | x_<i); the document's
perplexity is exp(mean NLL) over those positions. ToEdit (arXiv 2412.14689) decides every
edit from that same pass:
  up_revise           p(x_i) > threshold: redraw x_i from the top-k, softmax(logp / beta)
  low_drop_up_revise  as above, and drop x_i where p(x_i) < low_threshold
  filtering           only drop x_i where p(x_i) < low_threshold
The draw for position i of document d uses a uniform number hashed from (seed, d, i), so
an edit does not depend on batching, padding or the device, and a re-run reproduces it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from semisynth.config import MAX_DOC_TOKENS, EditConfig, PriorConfig
from semisynth.settings import read_settings
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
    def ppl(self) -> float:
        return float(np.exp(self.nll_sum / self.scored_tokens)) if self.scored_tokens else float("nan")


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


def batches_by_budget(segments: list[Segment], batch_tokens: int) -> list[list[Segment]]:
    """Length-bucketed batches: sorted by length, so padding stays small."""
    ordered = sorted(segments, key=lambda s: s.stop - s.start, reverse=True)
    batches, current = [], []
    for seg in ordered:
        width = (current[0].stop - current[0].start) if current else seg.stop - seg.start
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
    ``max_doc_tokens`` (a bound against huge documents: a warning names each one cut)."""

    def __init__(
        self,
        prior: Prior,
        edit: EditConfig | None,
        seed: int = 0,
        max_tokens: int | None = None,
        batch_tokens: int = 4096,
        window: int | None = None,
        logits_chunk: int = 1024,
        max_doc_tokens: int | None = MAX_DOC_TOKENS,
    ):
        if edit is not None and edit.top_k > prior.vocab_size:
            raise ValueError(f"top_k {edit.top_k} is larger than the prior's vocabulary "
                             f"({prior.vocab_size} tokens)")
        self.prior, self.edit, self.seed = prior, edit, seed
        self.max_tokens, self.batch_tokens = max_tokens, batch_tokens
        self.max_doc_tokens = max_doc_tokens
        self.window = min(window or prior.context, prior.context)
        self.logits_chunk = logits_chunk
        if prior.device.type == "cpu":
            # every core, unless several worker processes share this host and must split
            # them (the LocalCluster sets SEMISYNTH_TORCH_THREADS per worker, so this
            # process's own settings hold it): oversubscribed torch threads slow every worker
            threads = read_settings().torch_threads
            torch.set_num_threads(threads or os.cpu_count() or 1)

    @classmethod
    def from_config(cls, prior: Prior, cfg: PriorConfig, edit: EditConfig | None,
                    seed: int) -> Scorer:
        """The Scorer a validated PriorConfig describes."""
        return cls(prior, edit, seed=seed, max_tokens=cfg.max_tokens,
                   batch_tokens=cfg.batch_tokens, window=cfg.window,
                   max_doc_tokens=cfg.max_doc_tokens)

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
        progress: Callable[[int], None] | None = None,
    ) -> list[DocResult]:
        """Score (and edit, with an EditConfig) documents; ``progress(tokens)`` after each
        forward batch, with the positions it scored, so that a long document, many windows
        of the prior's context, shows its progress too."""
        token_ids, truncated = self.tokenize(texts)
        for doc_id, cut in zip(doc_ids, truncated, strict=True):
            if cut:
                log.warning("document %r has more than %d tokens: only its first %d are "
                            "scored and edited (prior.max_doc_tokens)", str(doc_id),
                            self.max_doc_tokens, self.max_doc_tokens)
        keys = [doc_key(self.seed, d) for d in doc_ids]
        nll = [np.zeros(max(len(t), 1), dtype=np.float64) for t in token_ids]
        new_ids = [t.copy() for t in token_ids]
        revised = [np.zeros(len(t), dtype=bool) for t in token_ids]
        dropped = [np.zeros(len(t), dtype=bool) for t in token_ids]
        segments = plan_segments([len(t) for t in token_ids], self.window, max(1, self.window // 4))
        for batch in batches_by_budget(segments, self.batch_tokens):
            out = self._forward(batch, token_ids, keys)
            for seg, (seg_nll, seg_new, seg_rev, seg_drop) in zip(batch, out, strict=True):
                span = slice(seg.first, seg.stop)
                nll[seg.doc][span] = seg_nll
                new_ids[seg.doc][span] = seg_new
                revised[seg.doc][span] = seg_rev
                dropped[seg.doc][span] = seg_drop
            if progress:
                progress(sum(s.stop - s.first for s in batch))
        results = []
        for i, doc_id in enumerate(doc_ids):
            ids = token_ids[i]
            kept = new_ids[i][~dropped[i]]
            results.append(
                DocResult(
                    doc_id=str(doc_id),
                    token_ids=ids,
                    edited_ids=kept,
                    scored_tokens=max(len(ids) - 1, 0),
                    nll_sum=float(nll[i][1:].sum()),
                    revised_tokens=int(revised[i].sum()),
                    edited_tokens=int((new_ids[i] != ids)[~dropped[i]].sum()),
                    dropped_tokens=int(dropped[i].sum()),
                    revised_mask=revised[i],
                    truncated=truncated[i],
                )
            )
        return results

    @torch.inference_mode()
    def _forward(self, batch: list[Segment], token_ids: list[np.ndarray], keys: list[int]):
        width = max(s.stop - s.start for s in batch)
        device = self.prior.device
        inputs = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        # target_mask marks the input positions whose logits predict a target token
        target_mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, seg in enumerate(batch):
            n = seg.stop - seg.start
            inputs[row, :n] = torch.from_numpy(token_ids[seg.doc][seg.start : seg.stop])
            mask[row, :n] = 1
            target_mask[row, seg.first - 1 - seg.start : n - 1] = True
        targets = torch.zeros_like(inputs)
        targets[:, :-1] = inputs[:, 1:]
        row_key = torch.tensor([_signed64(keys[s.doc]) for s in batch], dtype=torch.long)
        target_pos = torch.arange(width, dtype=torch.long).unsqueeze(0) + 1 + torch.tensor(
            [s.start for s in batch]
        ).unsqueeze(1)

        model = self.prior.model
        pin = device.type == "cuda"
        if pin:  # pinned host memory lets the copy overlap with queued GPU work
            inputs, mask = inputs.pin_memory(), mask.pin_memory()
        # without padding, no mask: attention takes its plain causal fast path
        attention_mask = None if bool(mask.all()) else mask.to(device, non_blocking=pin)
        hidden = model.base_model(
            input_ids=inputs.to(device, non_blocking=pin), attention_mask=attention_mask
        ).last_hidden_state
        flat_mask = target_mask.to(device)
        hidden = hidden[flat_mask]
        tgt = targets[target_mask].to(device)
        pos_keys = row_key.unsqueeze(1).expand_as(inputs)[target_mask].to(device)
        pos = target_pos[target_mask].to(device)
        nll, new_tok, rev, drop = [], [], [], []
        head = model.get_output_embeddings()
        for lo in range(0, hidden.shape[0], self.logits_chunk):
            hi = lo + self.logits_chunk
            logits = head(hidden[lo:hi]).float()
            # log p = logit - logsumexp: no second vocabulary-sized tensor per chunk
            log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            tok_logp = logits.gather(1, tgt[lo:hi, None]).squeeze(1) - log_norm.squeeze(1)
            chosen, revise, dropping = toedit_decisions(
                logits, tgt[lo:hi], pos_keys[lo:hi], pos[lo:hi], self.edit, log_norm
            )
            nll.append(-tok_logp.double().cpu())
            new_tok.append(chosen.cpu())
            rev.append(revise.cpu())
            drop.append(dropping.cpu())
        nll_all, new_all = torch.cat(nll).numpy(), torch.cat(new_tok).numpy()
        rev_all, drop_all = torch.cat(rev).numpy(), torch.cat(drop).numpy()
        out, offset = [], 0
        for seg in batch:
            n = seg.stop - seg.first
            span = slice(offset, offset + n)
            out.append((nll_all[span], new_all[span], rev_all[span], drop_all[span]))
            offset += n
        return out


def toedit_decisions(
    logp: torch.Tensor,
    targets: torch.Tensor,
    doc_keys: torch.Tensor,
    positions: torch.Tensor,
    cfg: EditConfig | None,
    log_norm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToEdit for a block of positions. logp: [N, V] log-probabilities, or logits with
    their log-normalizer log_norm [N, 1]; targets: [N] the actual tokens; doc_keys,
    positions: [N] what seeds each draw. Returns (new token ids, revised, dropped)."""
    no = torch.zeros_like(targets, dtype=torch.bool)
    if cfg is None:
        return targets, no, no
    token_logp = logp.gather(1, targets[:, None]).squeeze(1)
    if log_norm is not None:
        token_logp = token_logp - log_norm.squeeze(1)
    prob = token_logp.exp()
    revise = prob > cfg.threshold if cfg.strategy != "filtering" else no
    dropping = prob < cfg.low_threshold if cfg.strategy != "up_revise" else no
    chosen = targets.clone()
    if revise.any():
        # softmax over the top-k is shift-invariant: logits serve as well as log-probs
        top_logp, top_idx = logp[revise].topk(cfg.top_k, dim=-1)
        weights = torch.softmax(top_logp.double() / cfg.effective_beta, dim=-1)
        u = position_uniforms(doc_keys[revise], positions[revise])
        # inverse-CDF draw: the first top-k slot whose cumulative weight exceeds u
        slot = (weights.cumsum(-1) <= u.unsqueeze(1)).sum(-1).clamp(max=cfg.top_k - 1)
        chosen[revise] = top_idx.gather(1, slot.unsqueeze(1)).squeeze(1)
    return chosen, revise, dropping
