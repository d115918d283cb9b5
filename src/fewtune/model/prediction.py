"""One input's answer, in the shape every entry point (CLI, server, Python) reports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prediction:
    """One input's result.

    Attributes:
        path: the input's name: its path, or ``<image N>`` for a picture in memory.
        label: the best class, or the unknown label when the input was rejected.
        score: how sure the answer is: the class's probability, or for an unknown answer
            ``unknown_probability`` (never the nearest class's probability, which may be high
            although the input is like none of the classes).
        top_k: ``(label, probability)`` pairs, best first: which classes came closest, with the
            probabilities they would have if the input is one of the classes.
        probabilities: every class's probability (given that it is one of them), in class order.
        novelty: 1 - cosine similarity to the nearest class prototype; higher = less familiar.
        is_unknown: novelty is above the classifier's threshold (open-set mode only).
        nearest: the class that came closest (``top_k[0]``), also when the answer is unknown.
        unknown_probability: how likely the input is of none of the classes: 1/2 at the
            threshold, never 0 or 1 (see :func:`fewtune.model.openset.unknown_probability`).
    """

    path: str
    label: str
    score: float
    top_k: list[tuple[str, float]]
    probabilities: dict[str, float] = field(default_factory=dict)
    novelty: float = 0.0
    is_unknown: bool = False
    nearest: str = ""
    unknown_probability: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape scripts rely on: ``path, label, score, top_k: [{label, score}]``, then
        ``is_unknown``, ``nearest``, ``unknown_probability``, ``novelty`` and ``probabilities``
        (``{class: p}`` in class order)."""
        return {
            "path": self.path,
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
            "is_unknown": self.is_unknown,
            "nearest": self.nearest,
            "unknown_probability": self.unknown_probability,
            "novelty": self.novelty,
            "probabilities": dict(self.probabilities),
        }
