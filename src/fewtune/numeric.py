"""The few array helpers the embedding-side code needs, in NumPy: everything past the backbone
(strategies on frozen embeddings, calibration, the open set, saving) runs without importing
torch, whose import alone took 1.6-1.8 s of a 2 s warm ``train`` on a 2-core machine.

:class:`Seeded` draws the permutations ``torch.randperm`` drew from the same seed, so the folds
(and every number measured with them) stay what they were when this code ran on torch.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, in the input's float type."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, in the input's float type."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits)."""
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


class Seeded:
    """A stream of permutations, draw for draw those of ``torch.randperm(n, generator=g)`` with
    ``g = torch.Generator().manual_seed(seed)``: both are the Mersenne Twister seeded the same
    way, and torch shuffles small n by this Fisher-Yates loop."""

    def __init__(self, seed: int):
        self._words = np.random.RandomState(seed % 2**32)

    def randperm(self, n: int) -> np.ndarray:
        order = np.arange(n)
        if n < 2:
            return order
        draws = self._words.randint(0, 2**32, size=n - 1, dtype=np.uint32)
        for i, word in enumerate(draws.tolist()):
            j = i + word % (n - i)
            order[i], order[j] = order[j], order[i]
        return order
