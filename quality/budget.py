"""Equal token budgets: which documents of a corpus a comparison reads, and how much of them.

N-gram statistics depend on the sample size, so every comparison reads the same number of
tokens from each side: ``sample_to_budget`` draws documents in a seeded random order until
their tokens reach the budget, ``truncate_to_budget`` cuts the last one so the sample holds
exactly the budget, and ``split_half`` halves a reference for its split-half yardstick.
"""

import numpy as np


def doc_lengths(docs) -> np.ndarray:
    """Tokens per document (int64)."""
    return np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))


def sample_to_budget(docs: list[np.ndarray], budget: int, seed: int) -> list[int]:
    """Indices of documents, in a seeded random order, taken until their tokens reach `budget`."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    order = np.random.default_rng(seed).permutation(len(docs))
    cum = np.cumsum(doc_lengths(docs)[order])
    total = int(cum[-1]) if len(cum) else 0
    if total < budget:
        raise ValueError(f"corpus has {total} tokens, fewer than the budget of {budget}")
    last = int(np.searchsorted(cum, budget))  # first position whose running total reaches budget
    return order[: last + 1].tolist()


def truncate_to_budget(docs: list[np.ndarray], indices, budget: int) -> list[np.ndarray]:
    """The documents at `indices`, in that order, holding exactly `budget` tokens (last one cut)."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    chosen = [docs[i] for i in indices]
    cum = np.cumsum(doc_lengths(chosen))
    total = int(cum[-1]) if len(cum) else 0
    if total < budget:
        raise ValueError(f"documents hold {total} tokens, fewer than the budget of {budget}")
    last = int(np.searchsorted(cum, budget))
    before = int(cum[last - 1]) if last > 0 else 0
    return chosen[:last] + [chosen[last][: budget - before]]


def split_half(n_docs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random partition of range(n_docs) into two halves (B gets the odd one out), each sorted."""
    order = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(order[: n_docs // 2]), np.sort(order[n_docs // 2:])
