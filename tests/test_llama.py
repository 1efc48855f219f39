"""tasks/llama.py, the prior built without transformers, against transformers' own model
and tokenizer on the real prior; and what still goes to transformers."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semisynth.tasks import llama
from semisynth.tasks.prior import lean_model_unsupported_reason, load_prior, load_tokenizer

TEXTS = [
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
    "election produced \"no evidence\" that any irregularities took place.",
    "\ttabs\tand  runs   of spaces\n\nnew lines, digits 1234567 3.14159, accents: café naïve",
    "CJK 日本語のテキスト, emoji 🙂, <|im_end|> written as text, and a trailing space ",
    "",
]


@pytest.fixture(scope="module")
def official_tokenizer(prior_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prior_folder)


def test_the_default_prior_is_built_without_transformers(prior_folder, prior_f32):
    assert lean_model_unsupported_reason(prior_folder) is None
    assert isinstance(prior_f32.model, llama.LlamaLM)
    assert isinstance(prior_f32.tokenizer, llama.LlamaTokenizer)


def test_the_tokenizer_encodes_and_decodes_as_transformers_does(prior_f32, official_tokenizer,
                                                                brown_shards):
    from semisynth import documents

    brown = [r.text for r, _ in zip(documents.read_records(brown_shards[0]), range(20), strict=False)]
    ours, theirs = prior_f32.tokenizer, official_tokenizer
    for texts in (TEXTS, brown):
        ids = ours(texts, add_special_tokens=False)["input_ids"]
        assert ids == theirs(texts, add_special_tokens=False)["input_ids"]
        for row in ids:
            assert ours.decode(row) == theirs.decode(row)
    assert ours(TEXTS[0])["input_ids"] == theirs(TEXTS[0])["input_ids"]  # one text, special tokens
    assert (ours.eos_token_id, ours.pad_token_id) == (theirs.eos_token_id, theirs.pad_token_id)
    assert len(ours) == len(theirs)


@torch.inference_mode()
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_forward_gives_transformers_logits(prior_folder, assets_root, precision):
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, precision)
    official = AutoModelForCausalLM.from_pretrained(prior_folder, dtype=dtype).eval()
    ours = load_prior("default", assets_root, precision).model
    tok = load_tokenizer(prior_folder)
    ids = tok(TEXTS[:2], add_special_tokens=False)["input_ids"]
    width = min(len(r) for r in ids)
    batch = torch.tensor([r[:width] for r in ids])  # two rows: a batch, causal, no padding
    got, want = ours(batch).logits.float(), official(batch).logits.float()
    # the same operations in the same order: equal up to the last bits, the same top token
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 if precision == "float32" else 5e-2)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    body = ours.base_model(input_ids=batch, use_cache=False).last_hidden_state
    torch.testing.assert_close(ours.get_output_embeddings()(body).float(), got, rtol=0, atol=0)


def _copy_prior(prior_folder: Path, to: Path, **config_changes) -> Path:
    shutil.copytree(prior_folder, to)
    config = json.loads((to / "config.json").read_text())
    config.update(config_changes)
    (to / "config.json").write_text(json.dumps(config))
    return to


def test_a_rope_the_module_does_not_compute_goes_to_transformers(prior_folder, tmp_path):
    folder = _copy_prior(prior_folder, tmp_path / "scaled", rope_parameters={
        "rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0})
    assert lean_model_unsupported_reason(folder) == "rope_type not supported"
    prior = load_prior(str(folder), tmp_path, "float32")
    assert not isinstance(prior.model, llama.LlamaLM)
    assert type(prior.model).__name__ == "LlamaForCausalLM"
    assert isinstance(prior.tokenizer, llama.LlamaTokenizer)  # the tokenizer is still ours


def test_a_tokenizer_that_cleans_up_spaces_goes_to_transformers(prior_folder, tmp_path):
    folder = _copy_prior(prior_folder, tmp_path / "cleanup")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**config, "clean_up_tokenization_spaces": True}))
    assert llama.tokenizer_supported_reason(folder) == "clean_up_tokenization_spaces"
    tok = load_tokenizer(folder)
    assert not isinstance(tok, llama.LlamaTokenizer)
    assert tok.clean_up_tokenization_spaces is True


def test_weights_that_do_not_fit_the_config_are_named(prior_folder, tmp_path):
    folder = _copy_prior(prior_folder, tmp_path / "deeper", num_hidden_layers=31)
    with pytest.raises(ValueError, match=r"deeper: the weights do not match a Llama of its "
                                         r"config.json: missing \['model.layers.30"):
        llama.load_llama(folder, torch.float32)


def test_edit_of_one_document_never_imports_transformers(prior_folder, assets_root, tmp_path):
    """transformers' imports are most of a short `edit` (benchmarks/README.md, issue 20)."""
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"id": "a", "text": TEXTS[0]}) + "\n")
    script = ("import sys\nfrom semisynth.cli import main\n"
              f"code = main(['--data-root', {str(assets_root)!r}, 'edit', {str(source)!r}, "
              f"{str(tmp_path / 'out.jsonl')!r}, '--precision', 'float32'])\n"
              "print('code', code, 'transformers' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "code 0 False" in done.stdout, (done.stdout, done.stderr)
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["id"] == "a" and row["ppl"] > 1
