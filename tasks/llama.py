"""A Llama-shaped prior without transformers: its forward in plain torch, its weights from
safetensors, its tokenizer from ``tokenizer.json``.

Importing transformers' modeling code costs about 3 s on 2 cores (it pulls in
torch._dynamo, torch._inductor and torch.distributed), most of a one-document ``semisynth
edit``. The Llama body is short, so the prior is built here when its ``config.json`` is
one this module computes exactly as transformers does (``supported_reason`` says why not
otherwise; ``tasks/prior.py`` then loads it with transformers). The modules keep
transformers' names and layout (``model.layers[i].self_attn.q_proj``, ``lm_head``...), so
checkpoints load unchanged and the decode loop of ``tasks/generation.py`` drives either.
tests/test_llama.py compares both on the real prior.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"


@dataclass(frozen=True)
class LlamaShape:
    """The fields of a Llama ``config.json`` the forward reads (the names are
    transformers', so code that reads ``model.config`` reads either)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    model_type: str = "llama"
    attention_bias: bool = False
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_config(cls, config: dict) -> LlamaShape:
        heads = int(config["num_attention_heads"])
        return cls(
            vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(_rope(config).get("rope_theta", 10000.0)),
            max_position_embeddings=int(config.get("max_position_embeddings") or 2048),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)), extra=config)


def _rope(config: dict) -> dict:
    # transformers 5 writes rope_parameters; older checkpoints rope_theta and rope_scaling
    rope = dict(config.get("rope_parameters") or {})
    if "rope_theta" in config:
        rope.setdefault("rope_theta", config["rope_theta"])
    if config.get("rope_scaling"):
        rope.setdefault("rope_type", config["rope_scaling"].get("rope_type")
                        or config["rope_scaling"].get("type"))
    return rope


def supported_reason(config: dict) -> str | None:
    """None when this module computes the model of ``config`` (a parsed ``config.json``)
    as transformers does; else what it lacks."""
    if config.get("model_type") != "llama":
        return f"model_type {config.get('model_type')!r}"
    checks = {
        "hidden_act": (config.get("hidden_act", "silu") == "silu"),
        "attention_bias": not config.get("attention_bias", False),
        "mlp_bias": not config.get("mlp_bias", False),
        "pretraining_tp": config.get("pretraining_tp", 1) in (None, 1),
        "rope_type": _rope(config).get("rope_type", "default") in (None, "default"),
    }
    failed = [name for name, ok in checks.items() if not ok]
    return ", ".join(failed) + " not supported" if failed else None


class Linear(nn.Linear):
    """nn.Linear without bias or initialisation: the weights come from the checkpoint
    (initialising on the meta device goes through torch's reference ops, which import
    torch._dynamo: 1 s)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__(inputs, outputs, bias=False)

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    """nn.Embedding without initialisation (as ``Linear``)."""

    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32, and the weight applied in the input's dtype, as transformers does
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        dim = shape.head_dim
        # on the CPU even while the model is built on the meta device: meta's arange goes
        # through torch's reference ops, which import torch._dynamo (1 s)
        steps = torch.arange(0, dim, 2, dtype=torch.float, device="cpu")
        inv_freq = 1.0 / (shape.rope_theta ** (steps / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (B, T, head_dim) in ``x``'s dtype for ``positions`` (B, T)."""
        freqs = positions[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """q and k (B, heads, T, D) rotated by cos and sin (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class Attention(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.head_dim = shape.head_dim
        self.scaling = shape.head_dim ** -0.5
        self.groups = shape.num_attention_heads // shape.num_key_value_heads
        width, kv = shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
        self.q_proj = Linear(shape.hidden_size, width)
        self.k_proj = Linear(shape.hidden_size, kv)
        self.v_proj = Linear(shape.hidden_size, kv)
        self.o_proj = Linear(width, shape.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rows, width = x.shape[:2]
        q, k, v = (proj(x).view(rows, width, -1, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=width > 1, scale=self.scaling,
                                             enable_gqa=self.groups > 1)
        return self.o_proj(out.transpose(1, 2).reshape(rows, width, -1))


class MLP(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.gate_proj = Linear(shape.hidden_size, shape.intermediate_size)
        self.up_proj = Linear(shape.hidden_size, shape.intermediate_size)
        self.down_proj = Linear(shape.intermediate_size, shape.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.self_attn = Attention(shape)
        self.mlp = MLP(shape)
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class BodyOutput:
    last_hidden_state: torch.Tensor


class LlamaBody(nn.Module):
    """The decoder without its head: (B, T) token ids to (B, T, hidden) states, causal,
    positions 0..T-1 in every row."""

    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.config = shape
        self.embed_tokens = Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(shape) for _ in range(shape.num_hidden_layers)])
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(shape)

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> BodyOutput:
        del use_cache  # no KV cache here (tasks/generation.py keeps its own): accepted as transformers' is
        hidden = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        cos, sin = self.rotary_emb(hidden, positions)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin)
        return BodyOutput(self.norm(hidden))


@dataclass
class LMOutput:
    logits: torch.Tensor


class LlamaLM(nn.Module):
    """The body and its output head (tied to the embedding when the config says so)."""

    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.config = shape
        self.model = LlamaBody(shape)
        self.lm_head = Linear(shape.hidden_size, shape.vocab_size)
        if shape.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def base_model(self) -> LlamaBody:
        return self.model

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor) -> LMOutput:
        return LMOutput(self.lm_head(self.model(input_ids).last_hidden_state))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    return [folder / WEIGHTS]


def load_llama(folder: Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> LlamaLM:
    """The model in ``folder`` (``config.json`` and safetensors weights), in ``dtype`` on
    ``device``, in eval mode. Every weight the model has must be in the files, and every
    tensor in the files must be a weight of it (a head tied to the embedding may be absent
    or present)."""
    # lazy: safetensors, loaded only when a prior is
    from safetensors.torch import load_file

    folder = Path(folder)
    shape = LlamaShape.from_config(json.loads((folder / "config.json").read_text()))
    with torch.device("meta"):
        model = LlamaLM(shape)
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        state.update(load_file(path, device=str(device)))
    if shape.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = {k for k in model.state_dict() if not (shape.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{folder}: the weights do not match a Llama of its config.json: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if shape.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.to(device)  # its buffer is computed, not in the checkpoint
    return model.eval()


def weights_are_safetensors(folder: Path) -> bool:
    return any(p.exists() for p in (Path(folder) / WEIGHTS, Path(folder) / WEIGHTS_INDEX))


class LlamaTokenizer:
    """The prior's tokenizer from ``tokenizer.json`` through the ``tokenizers`` library,
    with the calls semisynth makes of transformers' fast tokenizer: ``tok(texts,
    add_special_tokens=False)["input_ids"]``, ``decode``, ``len``, and the ids of its EOS
    and padding tokens named in ``tokenizer_config.json``."""

    def __init__(self, folder: Path) -> None:
        # lazy: tokenizers, loaded only when a prior is
        from tokenizers import Tokenizer

        folder = Path(folder)
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = _read_json(folder / "tokenizer_config.json")
        self.eos_token_id = self._special_id(config.get("eos_token"))
        self.bos_token_id = self._special_id(config.get("bos_token"))
        self.pad_token_id = self._special_id(config.get("pad_token"))

    def _special_id(self, token) -> int | None:
        if isinstance(token, dict):
            token = token.get("content")
        return None if token is None else self._tok.token_to_id(token)

    def __call__(self, texts, add_special_tokens: bool = True) -> dict[str, list]:
        if isinstance(texts, str):
            return {"input_ids": self._tok.encode(texts, add_special_tokens=add_special_tokens).ids}
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def tokenizer_supported_reason(folder: Path) -> str | None:
    """None when ``LlamaTokenizer`` reads the folder's tokenizer as transformers would; else
    why not (its decode would differ, or it needs transformers' own classes)."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").exists():
        return "no tokenizer.json"
    config = _read_json(folder / "tokenizer_config.json")
    if config.get("clean_up_tokenization_spaces"):  # transformers rewrites spaces on decode
        return "clean_up_tokenization_spaces"
    if config.get("add_bos_token") or config.get("add_eos_token"):  # added by transformers' class
        return "add_bos_token/add_eos_token"
    return None
