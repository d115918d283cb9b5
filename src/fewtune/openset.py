""""None of these": novelty of an input and the threshold past which it is rejected as unknown.

Novelty is 1 - the cosine similarity to the nearest class prototype (class mean of L2-normalised
support embeddings). It depends on embeddings only, so it works for every strategy and for any
modality; it is comparable across the inputs of one classifier.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fewtune.strategies.base import normalize

TARGET_KNOWN_RECALL = 0.95  #: share of known-class inputs the calibrated threshold should accept


def novelty(features: torch.Tensor, class_prototypes: torch.Tensor) -> torch.Tensor:
    """(n,) in [0, 2]: 0 = identical direction to a prototype, higher = less like any known class."""
    return 1 - (normalize(features) @ class_prototypes.T).max(dim=1).values


def calibrate_threshold(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, target: float = TARGET_KNOWN_RECALL
) -> tuple[float, dict[str, Any]]:
    """Choose the novelty threshold from the support set alone.

    With 2+ examples in some class: each such example is scored against prototypes built without
    it (leave-one-out), which is how a new photo of a known class looks to the classifier; the
    threshold is the conformal quantile of those scores, so about ``target`` of known-class
    inputs are accepted. With one example per class there is no held-out known score; then each
    example is scored against the *other* classes only — how an input of an unseen class looks —
    and the threshold is set so that ``target`` of those are rejected.
    """
    unit = normalize(features)
    sums = torch.zeros(num_classes, unit.shape[1]).index_add_(0, labels, unit)
    counts = torch.bincount(labels, minlength=num_classes)
    others = unit @ normalize(sums).T  # (n, num_classes)
    own = torch.arange(len(labels))
    others_without_own = others.clone()
    others_without_own[own, labels] = -math.inf
    best_other = others_without_own.max(dim=1).values
    holdable = counts[labels] >= 2
    if holdable.any():
        loo_prototype = normalize(sums[labels] - unit)  # own class without this example
        own_similarity = (unit * loo_prototype).sum(dim=1)
        scores = (1 - torch.maximum(own_similarity, best_other))[holdable]
        threshold = _conformal_quantile(scores, target)
        return threshold, {"method": "leave-one-out conformal quantile", "target_known_recall": target, "calibration_examples": int(holdable.sum())}
    scores = 1 - best_other  # each example as if its class were unknown
    threshold = float(torch.quantile(scores, 1 - target))
    return threshold, {"method": "one example per class: other classes as stand-in unknowns", "target_unknown_rejection": target, "calibration_examples": len(scores)}


def _conformal_quantile(scores: torch.Tensor, target: float) -> float:
    """The ceil((n+1) * target)-th smallest score: a new exchangeable score falls below it with
    probability >= target. With too few scores for that, the largest."""
    ordered = scores.sort().values
    rank = min(math.ceil((len(ordered) + 1) * target), len(ordered))
    return float(ordered[rank - 1])
