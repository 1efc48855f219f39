"""Sampling text from the prior: a decode loop for Llama-shaped models with a static KV
cache and continuous batching.

``model.generate`` pads a batch to its longest prompt, keeps finished rows in the batch
until the last one ends and sorts the whole vocabulary at every step for top-p. Here:

- every slot of the batch advances one token per step at its own position, so a prompt
  is read token by token through the same step as generation, and a slot whose document
  ended takes the next prompt at once (continuous batching);
- the KV cache is one preallocated tensor per layer, written in place; attention reads
  only the columns up to the longest live position, rounded to ``WIDTH_STEP``;
- top-p is computed over the ``TOP_K`` most likely tokens, with the log-normaliser of the
  whole vocabulary; a row whose ``TOP_K`` tokens hold less than ``top_p`` of the mass
  takes the top ``WIDE_K``, and only a row that those do not cover either is sorted whole;
- attention of the step's one query per sequence is two batched matmuls (on a CPU much
  faster than ``scaled_dot_product_attention`` for a single query);
- the draw at (document, position) uses a uniform number hashed from the seed, the
  document's index and the position (``toedit.position_uniforms``), so the same prompts,
  seed and slot count give the same texts, and no document's draws depend on which
  documents shared its batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from semisynth.progress import Progress
from semisynth.tasks.llama import apply_rotary_pos_emb
from semisynth.tasks.toedit import doc_key, position_uniforms

# sequences in flight: 559 tokens/s against 440 at 32 on an AMX host, 304 against 291 on
# an AVX-512 BF16 one (benchmarks/README.md, generate.py)
SLOTS = 64
TOP_K = 64  # top-p's candidates for most rows
WIDE_K = 1024  # for the rows whose top TOP_K hold less than top_p, before a full sort
# attention reads the cache up to the longest live position rounded up to this: few
# distinct shapes for oneDNN, at most this many masked columns read in vain
WIDTH_STEP = 64


def supports(model: torch.nn.Module) -> bool:
    """Whether ``decode`` knows this architecture (Llama's layout of modules)."""
    return getattr(model.config, "model_type", None) in {"llama"} and not getattr(
        model.config, "attention_bias", False)


@dataclass
class _Slot:
    document: int
    prompt: list[int]
    key: int
    position: int = 0  # the position of the token this slot feeds at the next step
    written: list[int] = field(default_factory=list)

    def next_input(self) -> int:
        return self.prompt[self.position] if self.position < len(self.prompt) else self.written[-1]


class KVCache:
    """Keys and values of ``slots`` sequences of up to ``length`` tokens, per layer."""

    def __init__(self, config, slots: int, length: int, dtype: torch.dtype, device) -> None:
        kv_heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, slots, kv_heads, length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    def keep(self, rows: torch.Tensor) -> None:
        """Only the sequences at ``rows``, in that order (the batch shrinks at the end)."""
        self.keys = self.keys[:, rows].contiguous()
        self.values = self.values[:, rows].contiguous()


def forward_step(model: torch.nn.Module, cache: KVCache, tokens: torch.Tensor,
                 positions: torch.Tensor, width: int) -> torch.Tensor:
    """One token per sequence through a Llama model: ``tokens`` and ``positions`` are (S,);
    the keys and values are written at ``positions``; attention sees the columns
    ``0..positions[s]`` of sequence s's cache (``width`` > every position). float32 logits
    (S, vocab)."""
    body = model.model
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    hidden = body.embed_tokens(tokens)[:, None, :]  # (S, 1, H)
    cos, sin = body.rotary_emb(hidden, positions[:, None])
    visible = torch.arange(width, device=tokens.device)[None, :] <= positions[:, None]
    score_mask = torch.zeros(visible.shape, device=tokens.device).masked_fill_(
        ~visible, float("-inf"))[:, None, None, :]  # (S, 1, 1, width): added to the scores
    for i, layer in enumerate(body.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(hidden)
        q = attn.q_proj(h).view(h.shape[0], 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(h.shape[0], 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(h.shape[0], 1, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        cache.keys[i, rows, :, positions] = k[:, :, 0]
        cache.values[i, rows, :, positions] = v[:, :, 0]
        out = _one_query_attention(q, cache.keys[i, :, :, :width], cache.values[i, :, :, :width],
                                   score_mask, attn.scaling)
        hidden = hidden + attn.o_proj(out.reshape(h.shape[0], 1, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(body.norm(hidden))[:, 0].float()


def _one_query_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one query per sequence, ``q`` (S, heads, 1, D), over the cache's
    ``keys``/``values`` (S, kv_heads, width, D), each kv head serving its group of query
    heads; ``mask`` (S, 1, 1, width) is added to the scores. The scores are scaled in the
    model's dtype and the softmax taken in float32, as in transformers' eager attention. Two
    batched matmuls: on a CPU, about ten times faster than ``scaled_dot_product_attention``
    for a single query (benchmarks/README.md, "The decode loop"). Returns (S, heads, D)."""
    rows, heads, _, dim = q.shape
    kv_heads = keys.shape[1]
    grouped = q.view(rows, kv_heads, heads // kv_heads, dim)  # head h = kv head h // group
    scores = (torch.matmul(grouped, keys.transpose(-1, -2)) * scale).float() + mask
    out = torch.matmul(scores.softmax(-1).to(values.dtype), values)
    return out.view(rows, heads, dim)


def nucleus_draw(logits: torch.Tensor, uniforms: torch.Tensor, top_p: float) -> torch.Tensor:
    """One token per row from the smallest set of most likely tokens whose mass reaches
    ``top_p`` (HF's top-p: a token is kept while the mass before it is below ``top_p``),
    picked by inverse CDF at ``uniforms`` (S,) in [0, 1). ``logits`` are already tempered.

    A row's draw is exact once its most likely tokens hold ``top_p`` of the mass: first the
    top ``TOP_K``, then, for the rows they do not cover, the top ``WIDE_K`` (on the demo's
    Brown prompts at temperature 0.8, 16% of the rows need more than 64 tokens), and only
    then a full sort."""
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    rows = torch.arange(logits.shape[0], device=logits.device)
    for k in (TOP_K, WIDE_K):
        values, index = (logits if k == TOP_K else logits[rows]).topk(
            min(k, logits.shape[-1]), dim=-1)
        probs = (values - log_norm[rows]).exp()
        # the mass as _inverse_cdf adds it up: a row covered here keeps what a sort keeps
        covered = probs.cumsum(-1)[:, -1] >= top_p
        picked[rows[covered]] = _inverse_cdf(probs[covered], index[covered],
                                             uniforms[rows[covered]], top_p)
        rows = rows[~covered]
        if len(rows) == 0:
            return picked
    values, index = logits[rows].sort(dim=-1, descending=True)  # rare: a very flat row
    picked[rows] = _inverse_cdf((values - log_norm[rows]).exp(), index, uniforms[rows], top_p)
    return picked


def _inverse_cdf(probs: torch.Tensor, index: torch.Tensor, uniforms: torch.Tensor,
                 top_p: float) -> torch.Tensor:
    before = probs.cumsum(-1) - probs
    kept = torch.where(before < top_p, probs, 0.0)
    kept[:, 0] = probs[:, 0]  # the most likely token is always kept
    cdf = kept.cumsum(-1)
    target = uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]
    choice = (cdf <= target).sum(-1).clamp(max=probs.shape[-1] - 1)
    return index.gather(-1, choice[:, None])[:, 0]


@torch.inference_mode()
def decode(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seed: int,
    *,
    eos_token_id: int | None,
    temperature: float = 0.8,
    top_p: float = 0.95,
    min_new_tokens: int = 0,
    slots: int = SLOTS,
    progress: Progress | None = None,
) -> list[list[int]]:
    """The tokens written after each prompt (token ids, without the prompt; the EOS that
    ended a document is not included). ``prompts`` are token ids, none empty. A document
    ends at EOS (not before ``min_new_tokens``) or after ``max_new_tokens``.
    ``progress.advance(documents, also=tokens)`` after each step: the documents that ended
    in it and the tokens it wrote."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("decode: every prompt needs at least one token")
    if not prompts:
        return []
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    length = max(len(p) for p in prompts) + max_new_tokens
    if length > getattr(model.config, "max_position_embeddings", length):
        raise ValueError(f"decode: {length} positions exceed the model's context "
                         f"({model.config.max_position_embeddings})")
    queue = deque(range(len(prompts)))
    width = min(slots, len(prompts))
    cache = KVCache(model.config, width, length, dtype, device)
    keys = [doc_key(seed, str(d)) for d in range(len(prompts))]

    def start(document: int) -> _Slot:
        return _Slot(document, list(prompts[document]), keys[document])

    live: list[_Slot | None] = [start(queue.popleft()) for _ in range(width)]
    results: list[list[int]] = [[] for _ in prompts]
    while any(s is not None for s in live):
        active = [i for i, s in enumerate(live) if s is not None]
        if not queue and len(active) <= len(live) // 2:  # the tail: drop the finished rows
            cache.keep(torch.tensor(active, device=device))
            live = [live[i] for i in active]
        tokens = torch.tensor([s.next_input() if s else 0 for s in live], device=device)
        positions = torch.tensor([s.position if s else 0 for s in live], device=device)
        top = int(positions.max()) + 1
        span = min(length, -(-top // WIDTH_STEP) * WIDTH_STEP)
        logits = forward_step(model, cache, tokens, positions, span) / temperature
        if eos_token_id is not None and min_new_tokens > 0:
            early = torch.tensor([bool(s) and len(s.written) < min_new_tokens for s in live],
                                 device=device)
            logits[early, eos_token_id] = float("-inf")
        uniforms = position_uniforms(
            torch.tensor([s.key if s else 0 for s in live], device=device), positions + 1)
        drawn = nucleus_draw(logits, uniforms, top_p).tolist()
        ended_docs = step_tokens = 0
        for i, slot in enumerate(live):
            if slot is None:
                continue
            slot.position += 1
            if slot.position < len(slot.prompt):
                continue  # still reading its prompt: the draw is not used
            token = drawn[i]
            ended = token == eos_token_id
            if not ended:
                slot.written.append(token)
                step_tokens += 1
            if ended or len(slot.written) >= max_new_tokens:
                results[slot.document] = slot.written
                ended_docs += 1
                live[i] = start(queue.popleft()) if queue else None
        if progress and (ended_docs or step_tokens):
            progress.advance(ended_docs, also=step_tokens)
    return results
