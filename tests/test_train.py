"""Training's arithmetic: chosen per device (pure: the device is passed in, so a GPU's
choice is checked here without one), named by the result key, deterministic per device."""

import numpy as np
import pytest

from semisynth.config import LMConfig
from semisynth.tasks import train

SMALL = LMConfig(layers=1, hidden=32, heads=2, context=32, batch=4)


def test_auto_is_bf16_compiled_and_fused_on_a_gpu_that_computes_bf16():
    assert train.arithmetic(SMALL, "cuda", native_bf16=True) == train.Arithmetic(
        "cuda", "bfloat16", compile=True, fused_adamw=True)
    assert train.arithmetic(SMALL, "cuda", native_bf16=False).dtype == "float32"
    no_compile = SMALL.model_copy(update={"compile": False})
    assert train.arithmetic(no_compile, "cuda", native_bf16=True).compile is False


def test_auto_on_a_cpu_is_what_every_earlier_run_computed():
    for native in (True, False):  # AVX512-BF16 or not: float32 (benchmarks/README.md)
        assert train.arithmetic(SMALL, "cpu", native_bf16=native) == train.LEGACY
    asked = SMALL.model_copy(update={"precision": "bfloat16", "compile": True})
    assert train.arithmetic(asked, "cpu", native_bf16=False) == train.Arithmetic(
        "cpu", "bfloat16", compile=True, fused_adamw=False)


def test_the_result_key_names_the_arithmetic_and_keeps_earlier_keys():
    m = LMConfig(layers=2, hidden=64, heads=4, context=128, batch=8, epochs=5)
    args = ("s/abc.npy", "v/def.npy", {"heldout-human": "e/123.npy"}, m, 3)
    # 27a3cc2760781dcd: this run's key before precision and compile were options
    assert train.result_key(*args) == train.result_key(*args, train.LEGACY) == "27a3cc2760781dcd"
    keys = {train.result_key(*args, a) for a in (
        train.LEGACY, train.Arithmetic("cpu", "bfloat16", False, False),
        train.Arithmetic("cuda", "float32", False, True),
        train.Arithmetic("cuda", "bfloat16", True, True),
        train.Arithmetic("cuda", "bfloat16", False, True))}
    assert len(keys) == 5
    # the setting is not the key: 'auto' and 'float32' computing the same share the result
    explicit = m.model_copy(update={"precision": "float32", "compile": False})
    assert train.result_key(*args[:3], explicit, 3) == "27a3cc2760781dcd"


def test_bf16_autocast_trains_deterministically_and_differently_from_float32():
    stream = np.random.default_rng(0).integers(0, 200, 1000)
    bf16 = train.Arithmetic("cpu", "bfloat16", False, False)
    _, a, _ = train.train(stream, 200, SMALL, 1, arith=bf16)
    _, b, _ = train.train(stream, 200, SMALL, 1, arith=bf16)
    model, f32, _ = train.train(stream, 200, SMALL, 1, arith=train.LEGACY)
    assert a == b and a != f32
    assert a[-1] == pytest.approx(f32[-1], rel=0.02)  # the same training, other rounding
    ppl, tokens = train.perplexity(model, stream[:300], SMALL, bf16)
    assert tokens == 299 and ppl == pytest.approx(train.perplexity(model, stream[:300], SMALL)[0],
                                                  rel=0.02)
