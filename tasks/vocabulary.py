"""The experiment's vocabulary: the token ids its texts use, ranked.

The experiment's models are trained on a stream of the prior's token ids remapped to their
ranks among the ids that occur in its texts (a far smaller embedding than the prior's
vocabulary; benchmarks/train_vocab.py). Shared by the arms' streams (tasks/experiment.py)
and training and evaluation (tasks/train.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def vocabulary(streams: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted token ids that occur in any of the streams."""
    return np.unique(np.concatenate(list(streams))).astype(np.int32)


def remap(stream: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Each token id replaced by its rank in ``vocab``; an id outside it is an error."""
    ranks = np.searchsorted(vocab, stream)
    if len(stream) and (ranks.max() >= len(vocab) or not np.array_equal(vocab[ranks], stream)):
        raise ValueError("the stream holds token ids outside the experiment's vocabulary")
    return ranks.astype(np.int64)
