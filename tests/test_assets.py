"""Generation of the synthetic corpora (semisynth.tasks.assets, tasks.generation) with the
real prior, at tiny sizes: the static-cache step against the model's forward, top-p
without a full sort, determinism per document, progress and the cache."""

import torch
from recorded import Recorded

from semisynth import documents as docio
from semisynth.tasks import assets, generation

PROMPTS = [
    "The Fulton County Grand Jury said Friday",
    "It was",
    "Before the war the little town had a railroad station, two churches and",
    "She smiled",
]


@torch.inference_mode()
def test_left_padded_prompts_continue_as_they_would_alone(prior_f32, official_f32):
    """The left padding of ``generate`` (for the priors the decode loop does not know)."""
    tok = prior_f32.tokenizer
    batch = assets.left_padded(tok, PROMPTS[:3], prior_f32.device)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS[:3]]
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    greedy = {"do_sample": False, "max_new_tokens": 6, "pad_token_id": assets.pad_id(tok)}
    together = official_f32.generate(**batch, **greedy)[:, batch["input_ids"].shape[1]:]
    for row, prompt in zip(together, PROMPTS[:3], strict=True):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        alone = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        expected = official_f32.generate(**alone, **greedy)[0, alone["input_ids"].shape[1]:]
        assert row.tolist() == expected.tolist(), prompt


@torch.inference_mode()
def test_decode_steps_match_the_full_forward(prior_f32):
    """One token at a time through the static cache, two sequences at other positions in
    the same steps, gives the logits of the model's own forward over the whole prompt."""
    model, tok = prior_f32.model, prior_f32.tokenizer
    first, second = (tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[2:0:-1])
    cache = generation.KVCache(model.config, 2, 64, torch.float32, "cpu")
    steps = []
    for position, token in enumerate(first):
        other = second[min(position, len(second) - 1)]
        logits = generation.forward_step(model, cache, torch.tensor([token, other]),
                                         torch.tensor([position, min(position, len(second) - 1)]), 64)
        steps.append(logits[0])
    full = model(torch.tensor([first])).logits[0].float()
    torch.testing.assert_close(torch.stack(steps), full, atol=1e-3, rtol=1e-4)


def test_nucleus_draw_picks_what_a_full_sort_picks():
    """Top-p over the top 64, over the top 1024 for the rows those do not cover, and the
    full sort for flat rows pick the token that sorting the whole vocabulary picks, for
    the same uniform number."""
    gen = torch.Generator().manual_seed(0)
    peaked = torch.randn(64, 5000, generator=gen) * 6  # the top 64 hold > 95% of the mass
    wider = torch.randn(64, 5000, generator=gen) * 2.5  # about half the rows: the top 1024 do
    flat = torch.randn(64, 5000, generator=gen) * 0.1  # nor do they: the full sort
    mixed = torch.cat([peaked[:20], wider[:24], flat[:20]])  # every stage in one call
    for logits in (peaked, wider, flat, mixed):
        uniforms = torch.rand(64, generator=gen, dtype=torch.float64)
        probs = logits.softmax(-1)
        sorted_probs, order = probs.sort(-1, descending=True)
        kept = torch.where(sorted_probs.cumsum(-1) - sorted_probs < 0.95, sorted_probs, 0.0)
        cdf = kept.cumsum(-1)
        choice = (cdf <= uniforms[:, None].float() * cdf[:, -1:]).sum(-1).clamp(max=4999)
        expected = order.gather(-1, choice[:, None])[:, 0]
        assert torch.equal(generation.nucleus_draw(logits, uniforms, 0.95), expected)


def test_generation_is_deterministic_and_each_text_its_own(prior_f32):
    first = assets.generate(prior_f32, PROMPTS, max_new_tokens=8, seed=3, slots=2)
    assert assets.generate(prior_f32, PROMPTS, max_new_tokens=8, seed=3, slots=2) == first
    assert assets.generate(prior_f32, PROMPTS, max_new_tokens=8, seed=4, slots=2) != first
    # draws are hashed per document and position: other prompts beside it, or more
    # documents in flight, leave a document's text as it was
    other_first = ["A man", "In the beginning of the year 1961"] + PROMPTS[2:]
    again = assets.generate(prior_f32, other_first, max_new_tokens=8, seed=3, slots=2)
    assert again[2:] == first[2:] and again[:2] != first[:2]
    assert assets.generate(prior_f32, PROMPTS, max_new_tokens=8, seed=3, slots=4) == first
    assert all(text.startswith(prompt) and len(text) > len(prompt)
               for text, prompt in zip(first, PROMPTS, strict=True))


def test_progress_reports_each_document_once(prior_f32):
    reported = Recorded()
    assets.generate(prior_f32, PROMPTS[:3], max_new_tokens=8, seed=0, slots=2, progress=reported)
    assert reported.done == 3
    assert 3 * 4 <= sum(reported.also) <= 3 * 8  # at least half, at most all


def test_synthesize_writes_seeded_documents_once(prior_f32, brown_shards, tmp_path):
    out = tmp_path / "synthetic.jsonl.gz"
    reported = Recorded()
    path = assets.synthesize(prior_f32, brown_shards, out, documents=3, max_new_tokens=8, seed=1,
                             progress=reported, slots=2)
    docs = list(docio.read_records(str(path)))
    seeds = assets.seed_prompts(brown_shards, 3, 12)
    assert [d.id for d in docs] == ["synthetic/00000", "synthetic/00001", "synthetic/00002"]
    assert [d.meta["seeded_by"] for d in docs] == [source for source, _ in seeds]
    assert all(d.text.startswith(prompt) for d, (_, prompt) in zip(docs, seeds, strict=True))
    assert reported.done == 3
    written = out.read_bytes()
    assets.synthesize(prior_f32, brown_shards, out, documents=3, max_new_tokens=8, seed=2,
                      progress=reported)
    assert out.read_bytes() == written and reported.done == 3  # cached: nothing generated


def test_files_of_one_corpus_get_distinct_ids(prior_f32, brown_shards, tmp_path):
    """A corpus read from several generated files (the experiment's pool) must not lose its
    second file to duplicate ids."""
    ids = []
    for i in range(2):
        out = assets.synthesize(prior_f32, brown_shards, tmp_path / f"pool-{i}.jsonl.gz",
                                documents=2, max_new_tokens=4, seed=i, slots=2)
        ids.append({d.id for d in docio.read_records(str(out))})
    assert len(ids[0]) == len(ids[1]) == 2 and not ids[0] & ids[1]
