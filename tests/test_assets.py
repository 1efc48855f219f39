"""Batched generation of the synthetic corpora (semisynth.tasks.assets) with the real prior,
at tiny sizes: padding, determinism per batch, progress and the cache."""

import torch

from semisynth import documents as docio
from semisynth.tasks import assets

PROMPTS = [
    "The Fulton County Grand Jury said Friday",
    "It was",
    "Before the war the little town had a railroad station, two churches and",
    "She smiled",
]


@torch.inference_mode()
def test_left_padded_prompts_continue_as_they_would_alone(prior_f32):
    tok = prior_f32.tokenizer
    batch = assets.left_padded(tok, PROMPTS[:3], prior_f32.device)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS[:3]]
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    greedy = {"do_sample": False, "max_new_tokens": 6, "pad_token_id": assets.pad_id(tok)}
    together = prior_f32.model.generate(**batch, **greedy)[:, batch["input_ids"].shape[1]:]
    for row, prompt in zip(together, PROMPTS[:3], strict=True):
        alone = tok(prompt, add_special_tokens=False, return_tensors="pt")
        expected = prior_f32.model.generate(**alone, **greedy)[0, alone["input_ids"].shape[1]:]
        assert row.tolist() == expected.tolist(), prompt


def test_generation_is_deterministic_per_batch(prior_f32):
    side = prior_f32.tokenizer.padding_side
    first = assets.generate(prior_f32, PROMPTS, max_new_tokens=8, seed=3, batch_size=2)
    assert assets.generate(prior_f32, PROMPTS, max_new_tokens=8, seed=3, batch_size=2) == first
    assert assets.generate(prior_f32, PROMPTS, max_new_tokens=8, seed=4, batch_size=2) != first
    # batch 1 draws from its own seed: other prompts in batch 0 leave its texts as they were
    other_first_batch = ["A man", "In the beginning of the year 1961"] + PROMPTS[2:]
    again = assets.generate(prior_f32, other_first_batch, max_new_tokens=8, seed=3, batch_size=2)
    assert again[2:] == first[2:] and again[:2] != first[:2]
    assert all(text.startswith(prompt) and len(text) > len(prompt)
               for text, prompt in zip(first, PROMPTS, strict=True))
    assert prior_f32.tokenizer.padding_side == side  # the shared tokenizer is not changed


def test_progress_reports_each_batch(prior_f32):
    calls = []
    assets.generate(prior_f32, PROMPTS[:3], max_new_tokens=8, seed=0, batch_size=2,
                    progress=lambda docs, tokens: calls.append((docs, tokens)))
    assert [docs for docs, _ in calls] == [2, 1]
    assert 2 * 4 <= calls[0][1] <= 2 * 8 and 4 <= calls[1][1] <= 8  # at least half, at most all


def test_synthesize_writes_seeded_documents_once(prior_f32, brown_shards, tmp_path):
    out = tmp_path / "synthetic.jsonl.gz"
    calls = []
    path = assets.synthesize(prior_f32, brown_shards, out, documents=3, max_new_tokens=8, seed=1,
                             progress=lambda docs, tokens: calls.append(docs), batch_size=2)
    docs = list(docio.read_records(str(path)))
    seeds = assets.seed_prompts(brown_shards, 3, 12)
    assert [d.id for d in docs] == ["synthetic/00000", "synthetic/00001", "synthetic/00002"]
    assert [d.meta["seeded_by"] for d in docs] == [source for source, _ in seeds]
    assert all(d.text.startswith(prompt) for d, (_, prompt) in zip(docs, seeds, strict=True))
    assert calls == [2, 1]
    written = out.read_bytes()
    assets.synthesize(prior_f32, brown_shards, out, documents=3, max_new_tokens=8, seed=2,
                      progress=lambda docs, tokens: calls.append(docs))
    assert out.read_bytes() == written and calls == [2, 1]  # cached: nothing generated


def test_files_of_one_corpus_get_distinct_ids(prior_f32, brown_shards, tmp_path):
    """A corpus read from several generated files (the experiment's pool) must not lose its
    second file to duplicate ids."""
    ids = []
    for i in range(2):
        out = assets.synthesize(prior_f32, brown_shards, tmp_path / f"pool-{i}.jsonl.gz",
                                documents=2, max_new_tokens=4, seed=i, batch_size=2)
        ids.append({d.id for d in docio.read_records(str(out))})
    assert len(ids[0]) == len(ids[1]) == 2 and not ids[0] & ids[1]
