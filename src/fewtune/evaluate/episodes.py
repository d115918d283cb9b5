"""Episodic N-way K-shot evaluation tasks (Vinyals et al. 2016, "Matching Networks").

A few-shot number means little from one split: accuracy is averaged over many small random
tasks, with a confidence interval. Episodes are drawn from a seeded numpy generator, independent
of torch, so every strategy can be scored on exactly the same tasks, run after run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    """One few-shot task: fit on ``support``, score on ``query``.

    Attributes:
        classes: dataset labels of the ``way`` classes; class ``classes[i]`` is episode label ``i``.
        support: dataset indices, ``shot`` per class, grouped in the order of ``classes``.
        query: dataset indices, ``queries`` per class, grouped the same way; disjoint from ``support``.
    """

    classes: list[int]
    support: list[int]
    query: list[int]

    def local_labels(self, labels: Sequence[int]) -> tuple[list[int], list[int]]:
        """Episode labels (0..way-1) of the support and query items, given the dataset's ``labels``."""
        local = {c: i for i, c in enumerate(self.classes)}
        return [local[int(labels[i])] for i in self.support], [local[int(labels[i])] for i in self.query]


def sample_episodes(
    labels: Sequence[int], way: int, shot: int, queries: int, episodes: int, seed: int = 0
) -> list[Episode]:
    """Draw ``episodes`` random N-way K-shot tasks, the same ones for the same arguments.

    Each episode picks ``way`` distinct classes among those with at least ``shot + queries``
    items, then ``shot`` support and ``queries`` query items per class, without overlap.

    Args:
        labels: the class of each dataset item; an episode's indices point into this sequence.
        seed: seeds ``np.random.default_rng``; episodes do not depend on torch's random state.

    Raises:
        ValueError: a count is out of range, or too few classes have ``shot + queries`` items.
    """
    if way < 2 or shot < 1 or queries < 1 or episodes < 1:
        raise ValueError(
            f"need way >= 2, shot >= 1, queries >= 1 and episodes >= 1; "
            f"got way={way}, shot={shot}, queries={queries}, episodes={episodes}"
        )
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    needed = shot + queries
    eligible = sorted(c for c, items in by_class.items() if len(items) >= needed)
    if len(eligible) < way:
        raise ValueError(
            f"{way}-way {shot}-shot with {queries} queries needs {way} classes of at least {needed} items "
            "each; "
            f"only {len(eligible)} of the {len(by_class)} classes have that many: lower --way, --shot(s) or "
            "--queries"
        )
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(episodes):
        classes = sorted(eligible[k] for k in rng.choice(len(eligible), size=way, replace=False))
        support: list[int] = []
        query: list[int] = []
        for c in classes:
            picked = rng.choice(by_class[c], size=needed, replace=False).tolist()
            support += picked[:shot]
            query += picked[shot:]
        result.append(Episode(classes=classes, support=support, query=query))
    return result


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval, ``1.96 * std(ddof=1) / sqrt(n)``.

    The normal approximation is the few-shot literature's convention, so numbers compare with
    published ones. One value has no spread to estimate: its half-width is 0.0.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"expected a non-empty 1-d sequence of values, got shape {array.shape}")
    if array.size == 1:
        return float(array[0]), 0.0
    return float(array.mean()), float(1.96 * array.std(ddof=1) / math.sqrt(array.size))
