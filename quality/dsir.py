"""DSIR: data selection by importance resampling (Xie et al. 2023, "Data Selection for
Language Models via Importance Resampling", arXiv 2302.03169), with hashed n-gram features.

Features as in the authors' package (PyPI ``data-selection`` 1.0.3, ``HashedNgramDSIR``
with its defaults ``wordpunct`` and ``ngrams=2``): the text lowercased, split by the
pattern ``\\w+|[^\\w\\s]+`` (NLTK's WordPunctTokenizer), each unigram and each bigram (the
two words joined by a space) hashed to ``int(sha256(utf-8).hexdigest(), 16) % buckets``;
``tests/test_dsir.py`` checks they equal the package's own ``get_ngram_counts``.

What differs from the package, on purpose: texts in memory instead of jsonl files and a
cache folder, add-one smoothing instead of the package's ``+ 1e-8`` inside the logs, a
seeded generator instead of numpy's global one, the selection in its order and cut at a
token budget instead of a count of documents, and no minimum document length.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

WORDPUNCT = re.compile(r"\w+|[^\w\s]+")


class BucketHasher:
    """n-grams -> buckets, memoised: corpora repeat their n-grams, and one sha256 per
    distinct n-gram instead of per occurrence is most of the featurizer's speed."""

    def __init__(self, buckets: int):
        self.buckets = buckets
        self.memo: dict[str, int] = {}

    def bucket(self, gram: str) -> int:
        digest = hashlib.sha256(gram.encode("utf-8")).digest()
        return int.from_bytes(digest, "big") % self.buckets

    def __call__(self, grams: list[str]) -> np.ndarray:
        for gram in set(grams).difference(self.memo):
            self.memo[gram] = self.bucket(gram)
        return np.fromiter(map(self.memo.__getitem__, grams), dtype=np.int64, count=len(grams))


def words(text: str) -> list[str]:
    return WORDPUNCT.findall(text.lower())


def feature_buckets(text: str, hasher: BucketHasher) -> np.ndarray:
    """The bucket of every unigram and bigram occurrence of ``text`` (one entry each)."""
    toks = words(text)
    return hasher(toks + [f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False)])


def feature_counts(text: str, buckets: int = 10_000) -> np.ndarray:
    """The hashed unigram+bigram count vector of one text (length ``buckets``)."""
    return np.bincount(feature_buckets(text, BucketHasher(buckets)), minlength=buckets)


def smoothed_log_probs(docs: list[np.ndarray], buckets: int) -> np.ndarray:
    """log of the add-one smoothed bucket frequencies of a corpus (its documents' buckets)."""
    counts = np.bincount(np.concatenate([np.zeros(0, np.int64), *docs]), minlength=buckets)
    return np.log(counts + 1.0) - np.log(counts.sum() + buckets)


def log_importance_weights(target_texts: Sequence[str], pool_texts: Sequence[str],
                           buckets: int = 10_000) -> np.ndarray:
    """log w(x) = sum_j f_j(x) (log p_target[j] - log p_pool[j]) for every pool document x
    (see ``dsir_select``)."""
    hasher = BucketHasher(buckets)
    target = [feature_buckets(t, hasher) for t in target_texts]
    pool = [feature_buckets(t, hasher) for t in pool_texts]
    log_ratio = smoothed_log_probs(target, buckets) - smoothed_log_probs(pool, buckets)
    return np.array([log_ratio[doc].sum() for doc in pool], dtype=np.float64)


def gumbel_top_k_order(log_weights: np.ndarray, seed: int) -> np.ndarray:
    """All indices, ordered by log w + Gumbel noise, largest first: every prefix is a draw
    without replacement with probabilities proportional to w (the Gumbel-top-k trick)."""
    keys = log_weights + np.random.default_rng(seed).gumbel(size=len(log_weights))
    return np.argsort(-keys, kind="stable")


def dsir_select(target_texts: Sequence[str], pool_texts: Sequence[str],
                pool_tokens: Sequence[int], budget_tokens: int, seed: int,
                buckets: int = 10_000) -> np.ndarray:
    """Pool documents drawn by importance resampling towards the target, to a token budget.

    Features f(x): the counts of x's unigrams and bigrams hashed into ``buckets`` buckets
    (lowercased wordpunct words, sha256). Each side is a bag of hashed n-grams with add-one
    smoothed bucket probabilities p[j] = (n_j + 1) / (N + buckets), n_j the corpus's count
    in bucket j and N its total. A pool document's importance weight is

        log w(x) = log p_target(f(x)) - log p_pool(f(x)) = sum_j f_j(x) (log p_target[j] - log p_pool[j])

    and the documents are drawn without replacement with probability proportional to w:
    sorted by log w(x) + G(x), G standard Gumbel noise from ``numpy.random.default_rng(seed)``
    (deterministic for a seed). Returned: indices into the pool in that order, the shortest
    prefix whose ``pool_tokens`` sum reaches ``budget_tokens`` (the last document may
    overshoot; the caller truncates it). ValueError when the whole pool holds fewer tokens
    than the budget.
    """
    tokens = np.asarray(pool_tokens, dtype=np.int64)
    if len(tokens) != len(pool_texts):
        raise ValueError(f"{len(pool_texts)} pool documents but {len(tokens)} token counts")
    if tokens.sum() < budget_tokens:
        raise ValueError(f"the pool holds {int(tokens.sum())} tokens, fewer than the budget "
                         f"of {budget_tokens}")
    order = gumbel_top_k_order(log_importance_weights(target_texts, pool_texts, buckets), seed)
    if budget_tokens <= 0:
        return order[:0]
    reached = np.cumsum(tokens[order]) >= budget_tokens
    return order[: int(np.argmax(reached)) + 1]
