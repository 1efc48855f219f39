"""The collapse experiment's streams: every arm's token stream at exactly ``train_tokens``.
(Its planning: tasks/experiment_plan.py; its generated sources:
tasks/experiment_generation.py.)

A document is the prior's tokenization of its text as the score+edit stage stored it (the
score file's ``token_ids``: cut to ``prior.max_tokens`` when that is set), followed by the
tokenizer's EOS token as a separator that counts as one of its tokens. Held-out documents,
which are never scored, are tokenized the same way here.

The arms' data are drawn once, with the experiment's ``seed`` (the model seeds vary only
the models): one seeded order of the human pool and one of the synthetic pool, and every
arm takes whole documents from the start of these orders until its budget, the last
document cut to fit. So the arms are nested: syn25's human part is the start of the human
arm, syn50's synthetic part the start of syn75's, and two arms differ only by what they are
meant to differ by.

- a mixture arm at synthetic share s: ``round(s * T)`` synthetic tokens and the rest human,
  exact in tokens;
- an edited arm: the human pool ToEdit-edited by the score+edit stage with the arm's edit
  settings (its edited shards scored again, so their tokens are the edited text's), in the
  human order;
- a DSIR arm: synthetic pool documents in the order ``quality.dsir.dsir_select`` picks them,
  the human pool's text as the target.

An arm's documents are shuffled (seeded) and concatenated into its stream. The held-out
documents are checked to be in no arm (by text hash).

The vocabulary every model of the experiment uses is the sorted set of token ids that occur
in any arm's stream or held-out stream; a token id is replaced by its rank in that set. The
remap (tasks/vocabulary.py) is one-to-one on the experiment's text, shared by every arm and the evaluation, and
cuts the output layer from the prior's 49,152 rows to the few thousand types the corpora
hold, which on a CPU is most of a step's cost. Perplexities are over this vocabulary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semisynth.config import Config, ExperimentConfig
from semisynth.documents import atomic_path
from semisynth.quality import dsir
from semisynth.tasks.corpora import picked_shards
from semisynth.tasks.experiment_plan import (
    EVAL_CORPORA,
    HUMAN,
    SYNTHETIC,
)
from semisynth.tasks.score import read_scores, token_arrays
from semisynth.tasks.vocabulary import vocabulary


@dataclass
class Pool:
    """A corpus's documents in order: ids, text hashes and token ids (without separator)."""

    name: str
    ids: list[str]
    hashes: list[str]
    tokens: list[np.ndarray]

    @property
    def lengths(self) -> np.ndarray:
        """Each document's tokens in a stream: its token ids and the separator."""
        return np.array([len(t) + 1 for t in self.tokens], dtype=np.int64)


def scored_pool(name: str, score_paths: Sequence[Path]) -> Pool:
    """A scored corpus's documents, from its score files."""
    table = read_scores(list(score_paths), ["id", "doc_hash", "token_ids"])
    return Pool(name, table.column("id").to_pylist(), table.column("doc_hash").to_pylist(),
                token_arrays(table))


def shard_texts(shard_paths: Sequence[Path]) -> pa.Table:
    """id, text and doc_hash of a corpus's shards, in order."""
    return pa.concat_tables(pq.read_table(p, columns=["id", "text", "doc_hash"])
                            for p in shard_paths)


def tokenized_pool(name: str, shard_paths: Sequence[Path], tokenizer,
                   max_tokens: int | None) -> Pool:
    """A corpus that is not scored (the held-out documents), tokenized as the score+edit
    stage tokenizes: no special tokens, cut to ``max_tokens`` when set."""
    table = shard_texts(shard_paths)
    ids = tokenizer(table.column("text").to_pylist(), add_special_tokens=False)["input_ids"]
    tokens = [np.asarray(t[:max_tokens] if max_tokens else t, dtype=np.int64) for t in ids]
    return Pool(name, table.column("id").to_pylist(), table.column("doc_hash").to_pylist(), tokens)


@dataclass(frozen=True)
class Piece:
    """The first ``tokens`` stream tokens of document ``index`` of pool ``source``."""

    source: str
    index: int
    tokens: int
    cut: bool


def take_tokens(pool: Pool, order: Sequence[int], budget: int) -> list[Piece]:
    """Whole documents of ``pool`` in ``order`` until ``budget`` tokens, the last one cut
    to fit; a pool that holds fewer tokens is an error."""
    lengths, pieces, left = pool.lengths, [], budget
    for i in order:
        if left == 0:
            break
        n = min(int(lengths[i]), left)
        pieces.append(Piece(pool.name, int(i), n, n < lengths[i]))
        left -= n
    if left:
        raise ValueError(f"{pool.name} holds {budget - left} tokens in the documents given; "
                         f"{budget} are needed (add documents or lower train_tokens)")
    return pieces


def mixture_pieces(human: Pool, synthetic: Pool, human_order: Sequence[int],
                   synthetic_order: Sequence[int], share: float, budget: int) -> list[Piece]:
    """``round(share * budget)`` synthetic tokens and the rest human ones."""
    synthetic_tokens = int(round(share * budget))
    pieces = []
    if budget - synthetic_tokens:
        pieces += take_tokens(human, human_order, budget - synthetic_tokens)
    if synthetic_tokens:
        pieces += take_tokens(synthetic, synthetic_order, synthetic_tokens)
    return pieces


def in_order_of(pool: Pool, ids: Sequence[str], like: Pool) -> list[int]:
    """Indices of ``pool``'s documents in the order their ids have in ``like``, given
    ``ids`` of ``like`` in the wanted order (an edited pool keeps its source's ids)."""
    where = {doc_id: i for i, doc_id in enumerate(pool.ids)}
    missing = [d for d in ids if d not in where]
    if missing:
        raise ValueError(f"{pool.name} lacks {len(missing)} documents of {like.name}, "
                         f"e.g. {missing[0]!r}")
    return [where[d] for d in ids]


def seeded_order(n: int, seed: int, salt: str) -> np.ndarray:
    """A permutation of n documents from the experiment's seed and the pool's name."""
    digest = hashlib.sha256(f"{seed}\x00{salt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(n)


def arm_pieces(ecfg: ExperimentConfig, arm: str, pools: Mapping[str, Pool],
               texts: Mapping[str, list[str]], dsir_select: Callable | None = None) -> list[Piece]:
    """The documents (pieces) of one arm, ``train_tokens`` in all. ``pools``: the human and
    synthetic pools, and each edited arm's edited pool under the arm's name; ``texts``: the
    pools' texts (DSIR reads them)."""
    a, budget = ecfg.arms[arm], ecfg.train_tokens
    human, synthetic = pools[HUMAN], pools[SYNTHETIC]
    human_order = seeded_order(len(human.ids), ecfg.seed, HUMAN)
    synthetic_order = seeded_order(len(synthetic.ids), ecfg.seed, SYNTHETIC)
    if a.edit is not None:
        edited = pools[arm]
        return take_tokens(edited, in_order_of(edited, [human.ids[i] for i in human_order], human),
                           budget)
    if a.select == "dsir":
        if synthetic.lengths.sum() <= budget:
            raise ValueError(f"DSIR needs a synthetic pool of more than {budget} tokens to choose "
                             f"from; it holds {int(synthetic.lengths.sum())}")
        select = dsir_select or dsir.dsir_select
        order = select(texts[HUMAN], texts[SYNTHETIC], synthetic.lengths, budget, ecfg.seed)
        return take_tokens(synthetic, order, budget)
    return mixture_pieces(human, synthetic, human_order, synthetic_order, a.share, budget)


def assemble(pieces: Sequence[Piece], pools: Mapping[str, Pool], eos: int, seed: int) -> np.ndarray:
    """The arm's stream: its documents shuffled (seeded), each with its separator, the cut
    ones only as far as they are taken."""
    parts = []
    for k in np.random.default_rng(seed).permutation(len(pieces)):
        p = pieces[k]
        doc = np.append(pools[p.source].tokens[p.index], eos)
        parts.append(doc[: p.tokens])
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


def eval_stream(pool: Pool, eos: int) -> np.ndarray:
    """A held-out corpus as one stream: every document with its separator, in order."""
    return np.concatenate([np.append(t, eos) for t in pool.tokens]).astype(np.int32)


def pieces_hashes(pieces: Sequence[Piece], pools: Mapping[str, Pool]) -> set[str]:
    return {pools[p.source].hashes[p.index] for p in pieces}


def check_heldout(arms: Mapping[str, Sequence[Piece]], pools: Mapping[str, Pool],
                  heldout: Sequence[Pool]) -> None:
    """Refuse an experiment whose held-out documents (by text) are in some arm."""
    for pool in heldout:
        held = set(pool.hashes)
        for arm, pieces in arms.items():
            shared = held & pieces_hashes(pieces, pools)
            if shared:
                raise ValueError(f"{len(shared)} documents of {pool.name} are in arm {arm!r}: "
                                 "the held-out documents must be text no arm trains on")


def save_array(array: np.ndarray, folder: Path) -> tuple[Path, str]:
    """``folder/<sha256 of the array>.npy``, written once (content-keyed); (path, hash)."""
    array = np.ascontiguousarray(array)
    sha = hashlib.sha256(str(array.dtype).encode() + array.tobytes()).hexdigest()[:16]
    path = Path(folder) / f"{sha}.npy"
    if not path.exists():
        with atomic_path(path, keep_existing=True) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    return path, sha


@dataclass
class ArmData:
    """One arm, built: its stream file and what it is made of."""

    arm: str
    stream: Path
    stream_sha: str
    pieces: list[Piece]
    shards: list[Path] = field(default_factory=list)  # its documents (uncut) as a corpus,
    scores: list[Path] = field(default_factory=list)  # for the gate metrics

    def sources(self) -> list[dict]:
        """Per source pool: documents, tokens and cut documents in the stream."""
        rows: dict[str, dict] = {}
        for p in self.pieces:
            row = rows.setdefault(p.source, {"source": p.source, "documents": 0, "tokens": 0,
                                             "cut_documents": 0})
            row["documents"] += 1
            row["tokens"] += p.tokens
            row["cut_documents"] += int(p.cut)
        return list(rows.values())


@dataclass
class ExperimentData:
    """Every arm's stream, the held-out streams and the shared vocabulary, on disk."""

    arms: dict[str, ArmData]
    evals: dict[str, tuple[Path, str, int]]  # corpus -> (stream file, hash, tokens)
    vocab: Path
    vocab_sha: str
    vocab_size: int
    eos: int
    doc_hashes: dict[str, set[str]] = field(default_factory=dict)  # corpus or arm -> text hashes
    pool_tokens: dict[str, int] = field(default_factory=dict)  # the pools' stream tokens


def experiment_folder(root: Path) -> Path:
    return Path(root) / "experiments"


def build_experiment(ecfg: ExperimentConfig, pcfg: Config, shards: Mapping[str, list[Path]],
                     scores: Mapping[str, list[Path]], tokenizer, score_dir: Path,
                     dsir_select: Callable | None = None) -> ExperimentData:
    """Every arm's stream and metrics corpus, the held-out streams and the vocabulary, from
    the run's shards and score files (``score_dir``: where the arms' carried-over score
    files go)."""
    eos = int(tokenizer.eos_token_id)
    pools = {HUMAN: scored_pool(HUMAN, scores[HUMAN]),
             SYNTHETIC: scored_pool(SYNTHETIC, scores[SYNTHETIC])}
    for arm, a in ecfg.arms.items():
        if a.edit is not None:
            pools[arm] = scored_pool(arm, scores[arm])
    texts = {name: shard_texts(shards[name]).column("text").to_pylist()
             for name in (HUMAN, SYNTHETIC)}
    heldout = [tokenized_pool(n, shards[n], tokenizer, pcfg.prior.max_tokens)
               for n in EVAL_CORPORA if n in shards]
    pieces = {arm: arm_pieces(ecfg, arm, pools, texts, dsir_select) for arm in ecfg.arms}
    check_heldout(pieces, pools, heldout)
    folder = experiment_folder(pcfg.root)
    arms, streams = {}, []
    for arm, arm_pieces_ in pieces.items():
        stream = assemble(arm_pieces_, pools, eos, ecfg.seed)
        assert len(stream) == ecfg.train_tokens, (arm, len(stream))
        streams.append(stream)
        path, sha = save_array(stream, folder / "streams")
        arms[arm] = ArmData(arm, path, sha, arm_pieces_)
        arms[arm].shards, arms[arm].scores = arm_corpus(pcfg, arm, arm_pieces_, shards, scores,
                                                      score_dir)
    evals = {}
    for pool in heldout:
        stream = eval_stream(pool, eos)
        streams.append(stream)
        path, sha = save_array(stream, folder / "streams")
        evals[pool.name] = (path, sha, len(stream))
    vocab = vocabulary(streams)
    vocab_path, vocab_sha = save_array(vocab, folder / "vocab")
    hashes = {arm: pieces_hashes(p, pools) for arm, p in pieces.items()}
    hashes.update({pool.name: set(pool.hashes) for pool in heldout})
    sizes = {name: int(pools[name].lengths.sum()) for name in (HUMAN, SYNTHETIC)}
    return ExperimentData(arms, evals, vocab_path, vocab_sha, len(vocab), eos, hashes, sizes)


def arm_corpus(pcfg: Config, arm: str, pieces: Sequence[Piece], shards: Mapping[str, list[Path]],
               scores: Mapping[str, list[Path]], score_dir: Path) -> tuple[list[Path], list[Path]]:
    """The arm's documents as a corpus of their own (shards of ``shard_docs``, the scores
    carried over from the pools they come from): what the gate metrics measure."""
    picks: dict[str, list[int]] = {}
    for p in pieces:
        picks.setdefault(p.source, []).append(p.index)
    components = {name: (shards[name], scores[name]) for name in picks}
    return picked_shards(components, {n: np.array(sorted(ix), dtype=np.int64)
                                      for n, ix in picks.items()},
                         pcfg.shard_dir(arm), score_dir, "arm", pcfg.shard_docs)


def arm_rows(ecfg: ExperimentConfig, run_id: str, data: ExperimentData) -> list[dict]:
    """``experiment_arms`` rows: each arm's stream by source pool."""
    return [{"experiment": ecfg.name, "run_id": run_id, "arm": arm, "stream_sha": a.stream_sha, **row}
            for arm, a in data.arms.items() for row in a.sources()]


