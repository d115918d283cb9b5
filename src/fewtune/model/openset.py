""" "None of these": novelty of an input and the threshold past which it is rejected as unknown.

Novelty is 1 - the cosine similarity to the nearest class prototype (class mean of L2-normalised
support embeddings). It is always measured on the *pretrained* network's embeddings, also when a
strategy fine-tuned the body: a tuned body has been trained on exactly the support images, so
their embeddings sit far tighter than a new image's, and any threshold calibrated on them rejects
new images of known classes (measured: up to a third of them on Omniglot). Pretrained embeddings
of the support images were never trained on, so leave-one-out scores on them are honest held-out
scores. It depends on embeddings only, so it works for every strategy and for any modality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from fewtune.geometry import leave_one_out_similarity, normalize

#: share of known-class inputs the calibrated threshold should accept (2+ examples in a class).
#: 0.98 rather than 0.95: every known input rejected is an answer lost, and the default path must
#: stay within 2 points of the closed-set accuracy (see docs/benchmarks.md, "default path").
TARGET_KNOWN_RECALL = 0.98
#: with one example per class, the threshold is this many standard deviations above the mean
#: novelty of each support example against the other classes (see :func:`calibrate_threshold`)
ONE_SHOT_MARGIN = 1.0
#: an unknown answer's probability never leaves [1 - CAP, CAP]: a few examples cannot prove certainty
UNKNOWN_PROBABILITY_CAP = 0.99
DEFAULT_UNKNOWN_LABEL = "unknown"


@dataclass
class OpenSet:
    """How a classifier answers "none of these".

    Attributes:
        enabled: reject inputs whose novelty is above ``threshold``.
        threshold: calibrated from the support set by :func:`calibrate_threshold`.
        unknown_label: the label a rejected input gets; no class may have this name.
        calibration: how the threshold was chosen.
    """

    enabled: bool = True
    threshold: float = math.inf
    unknown_label: str = DEFAULT_UNKNOWN_LABEL
    calibration: dict[str, Any] = field(default_factory=dict)


def novelty(features: np.ndarray, class_prototypes: np.ndarray) -> np.ndarray:
    """(n,) in [0, 2]: 0 = identical direction to a prototype, higher = less like any known class."""
    # at least 0: rounding made an input identical to a prototype -1e-7 (printed "-0.000")
    return np.maximum(1 - (normalize(features) @ class_prototypes.T).max(axis=1), 0)


def calibrate_threshold(
    features: np.ndarray, labels: np.ndarray, num_classes: int, target: float = TARGET_KNOWN_RECALL
) -> tuple[float, dict[str, Any]]:
    """Choose the novelty threshold from the support set alone (pretrained embeddings).

    With 2+ examples in some class: each such example is scored against prototypes built without
    it (leave-one-out), which is how a new photo of a known class looks to the classifier; the
    threshold is the conformal quantile of those scores, so about ``target`` of known-class inputs
    are accepted.

    With one example per class nothing tells how far a new example of a class lies from its one
    example. What is known is how far each example lies from the *other* classes; the threshold
    is their mean plus ``ONE_SHOT_MARGIN`` standard deviations: an input is unknown only when it is
    clearly less like any class than the classes are like each other. (Setting it so that 95% of
    those stand-in unknowns are rejected, as fewtune did before, rejected 42% of new known-class
    drawings at Omniglot 5-way 1-shot and 83% at 20-way: within-class spread is as large as the
    spread between classes there.)

    The report's ``spread`` (standard deviation of the calibration scores) sets how fast
    :func:`unknown_probability` moves away from 1/2 around the threshold.
    """
    held_out, against_others = support_novelty(features, labels, num_classes)
    if held_out is not None:
        scores = held_out
        threshold = known_quantile(scores, target)
        how = {
            "method": "leave-one-out conformal quantile, at least the normal-fit quantile",
            "target_known_recall": target,
        }
    else:
        scores = against_others  # each example as if its class were unknown
        threshold = float(scores.mean()) + ONE_SHOT_MARGIN * (
            float(scores.std(ddof=1)) if len(scores) > 1 else 0.0
        )
        how = {
            "method": "one example per class: mean + 1 sd of each example's novelty against the other classes"
        }
    spread = float(scores.std(ddof=1)) if len(scores) > 1 else 0.0
    return threshold, {**how, "calibration_examples": len(scores), "spread": round(max(spread, 1e-3), 6)}


def support_novelty(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """Novelty scores of the support set that no prototype was built from.

    Returns ``(held_out, against_others)``: the leave-one-out novelty of each example of a class
    with 2+ examples (None if there is none), and each example's novelty against the other
    classes only, as if its own class were unknown.
    """
    similarity = leave_one_out_similarity(features, labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    own = np.arange(len(labels))
    own_similarity = similarity[own, labels]  # fancy indexing: a copy
    similarity[own, labels] = -np.inf
    best_other = similarity.max(axis=1)
    holdable = counts[labels] >= 2
    held_out = (1 - np.maximum(own_similarity, best_other))[holdable] if holdable.any() else None
    return held_out, 1 - best_other


def unknown_probability(novelty: np.ndarray, threshold: float, spread: float) -> np.ndarray:
    """(n,) how likely each input is of none of the classes: 1/2 at the threshold, logistic in
    (novelty - threshold) / spread, capped to [1 - CAP, CAP].

    It is a reading of the novelty score on the scale of the calibration scores, not a frequency
    fitted on unknown inputs (a support set has none); its job is to make an answer near the
    threshold say that it is in doubt, and no answer claim certainty.
    """
    if not math.isfinite(threshold):
        return np.full_like(novelty, 1 - UNKNOWN_PROBABILITY_CAP)
    cap = UNKNOWN_PROBABILITY_CAP
    logistic = 0.5 * (1 + np.tanh((novelty - threshold) / max(spread, 1e-3) / 2))  # no overflow
    return np.clip(logistic, 1 - cap, cap).astype(novelty.dtype)


def known_quantile(scores: np.ndarray, target: float) -> float:
    """The novelty below which ``target`` of new known-class inputs should fall, from held-out
    support scores: the conformal quantile, at least the normal fit's quantile.

    With fewer than 1/(1 - target) - 1 scores (49 at 98%) the conformal quantile is the largest
    score, which covers only n/(n+1) of new known inputs; the normal fit's quantile extrapolates
    the tail (development episodes, 5-way 5-shot: Caltech known images rejected 2.6% -> 1.7%,
    never-taught 80% -> 74%; Omniglot 3.7% -> 3.4%, 51% -> 50%). A log-normal fit, whose tail is
    longer, rejected as many known drawings as targeted on Omniglot but caught a quarter fewer
    unknown photos on Caltech-101 (``bench/threshold_rules.py``, docs/benchmarks.md).
    """
    normal = float(scores.mean()) + NormalDist().inv_cdf(target) * (
        float(scores.std(ddof=1)) if len(scores) > 1 else 0.0
    )
    return max(conformal_quantile(scores, target), normal)


def conformal_quantile(scores: np.ndarray, target: float) -> float:
    """The ceil((n+1) * target)-th smallest score: a new exchangeable score falls below it with
    probability >= target. With too few scores for that, the largest."""
    ordered = np.sort(scores)
    rank = min(math.ceil((len(ordered) + 1) * target), len(ordered))
    return float(ordered[rank - 1])
