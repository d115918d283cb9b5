"""Transductive inference: a batch of unlabelled inputs, classified together, refines the classes.

After PT-MAP (Hu et al. 2021, "Leveraging the Feature Distribution in Transfer-based Few-Shot
Learning"): features are power-transformed (square root, which makes their distribution more
Gaussian), unit-normalised and centred; then each class centre, starting at its support mean,
moves a step towards the batch inputs softly assigned to it, for a few rounds. The final soft
assignments are the predictions.

What the batch is assumed to hold decides how inputs are assigned:

- ``balanced=False`` ("proportions"): class proportions are estimated from the batch along with
  the centres (expectation-maximisation of a mixture with class weights), and features are
  centred on the support alone.
- ``balanced=True``: every class holds about as many batch inputs, so the assignment is an
  optimal-transport plan with equal class totals (Sinkhorn), as in PT-MAP. More accurate on
  balanced batches, far *worse* than no transduction on lopsided ones.
- :func:`decide` (what ``--transductive`` does): the batch chooses.
  Proportions are estimated first; when they are consistent with equal class counts (chi-square,
  :data:`BALANCE_LEVEL`) the balanced assignment is used. Otherwise, with one example in some
  class, the proportion-estimating answer; with 2+ examples in every class, none at all: the
  caller falls back to its inductive answer. On 100 development episodes a setting (seed 0,
  5-way, 15 queries a class or a lopsided share), estimating proportions beat ``probe`` at 1 shot
  (Omniglot +3, Caltech-101 +2, 32-px Caltech +4 points on lopsided batches) but not at 5 shots
  (-0.4 to -0.6), while the balanced assignment beat it at 5 shots only on balanced batches.

On 150 development episodes (seed 0, 5-way 1-shot, 15 queries a class or a lopsided share of
them), accuracy without transduction / default / balanced: Omniglot balanced 77.9 / 82.1 / 88.2,
lopsided 78.0 / 81.1 / 60.7; Caltech-101 balanced 93.5 / 96.5 / 99.2, lopsided 93.7 / 94.7 / 70.1.
Centring on everything, as PT-MAP does, was 1-2 points better on balanced batches but fell below
no transduction on synthetic ones with 80 / 5 / 5 inputs per class (tests/test_transduction.py).

easyfsl's PTMAP power-transforms features after normalising them and never normalises again; on
Caltech-101 5-way 1-shot that collapses to 77% where this ordering gives 99%.
"""

from __future__ import annotations

import numpy as np

from fewtune.geometry import leave_one_out_similarity, normalize
from fewtune.numeric import log_softmax

POWER = 0.5  #: exponent of the power transform (PT-MAP's)
SHARPNESS = 10.0  #: assignment weight ``exp(-SHARPNESS * squared distance)`` (PT-MAP's lambda)
STEP = 0.2  #: fraction of the way each centre moves per round (PT-MAP's alpha)
ROUNDS = 10  #: refinement rounds (PT-MAP's default; 20 gained 0.1-0.6 points on dev episodes)
SINKHORN_ITERATIONS = 1000
SINKHORN_TOLERANCE = 1e-4
#: a batch is taken as balanced when the chi-square statistic of its estimated class counts is below
#: this quantile of the chi-square distribution for equal counts
BALANCE_LEVEL = 0.75
#: at 2+ shots, a balanced assignment may change this share of the inductive answers, or the
#: support's leave-one-out error rate if higher. 100 development episodes (seed 0, 5-way 5-shot,
#: 15 queries a class or a lopsided share): lopsided batches mistaken for balanced ones had cost
#: 0.1-0.5 points against no transduction; with the cap, none, and balanced batches keep
#: +0.5 to +1.8 of the +1.0 to +2.7 points (Caltech-101, Omniglot, 32-px Caltech)
MIN_CHANGES = 0.05


def transform(
    support: np.ndarray, known: np.ndarray, batch: np.ndarray, balanced: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Signed square root, unit norm, centred, unit norm again. A balanced batch is centred on the
    mean of everything (PT-MAP); any other on the mean of the support's class means, which a
    lopsided batch cannot drag towards its largest class."""
    both = np.concatenate([support, batch]).astype(np.float32)
    both = normalize(np.sign(both) * np.abs(both) ** POWER)
    centre = both.mean(axis=0) if balanced else _weighted_means(known, both[: len(support)]).mean(axis=0)
    both = normalize(both - centre)
    return both[: len(support)], both[len(support) :]


def log_probabilities(
    support: np.ndarray, labels: np.ndarray, num_classes: int, batch: np.ndarray, balanced: bool = False
) -> np.ndarray:
    """(len(batch), num_classes) log-probabilities of each batch input's class, from all of them,
    in the mode given; :func:`decide` lets the batch choose instead.

    Args:
        support: (n, dim) labelled embeddings; labels: (n,) in ``[0, num_classes)``, every class present.
        batch: (m, dim) unlabelled embeddings, classified together.
        balanced: assume the batch holds about as many inputs of each class (see the module doc).
    """
    return _refine(support, labels, num_classes, batch, balanced)[0]


def decide(
    support: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch: np.ndarray,
    inductive: np.ndarray | None = None,
) -> tuple[np.ndarray, str] | None:
    """The batch decides the mode (see the module doc): ``(log-probabilities, mode)``, or None
    when refinement is not supported and the caller should answer inductively.

    ``inductive``: the caller's own answers (class indices). With 2+ examples in every class, a
    balanced assignment that changes more of them than the support set's leave-one-out error
    rate (at least :data:`MIN_CHANGES`) is taken for a lopsided batch mistaken for a balanced one,
    and refused.
    """
    estimated, weights = _refine(support, labels, num_classes, batch, False)
    several = int(np.bincount(labels, minlength=num_classes).min()) >= 2
    if looks_balanced(weights, len(batch)):
        balanced = _refine(support, labels, num_classes, batch, True)[0]
        if not several or inductive is None:
            return balanced, "balanced"
        changed = float((balanced.argmax(1) != inductive).mean())
        if changed <= max(MIN_CHANGES, leave_one_out_error(support, labels, num_classes)):
            return balanced, "balanced"
        return None
    if several:
        return None
    return estimated, "proportions"


def leave_one_out_error(support: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Share of support examples the nearest prototype built without them gets wrong."""
    similarity = leave_one_out_similarity(support, labels, num_classes)
    return float((similarity.argmax(1) != labels).mean())


def balance_statistic(weights: np.ndarray, batch_size: int) -> float:
    """Pearson's chi-square statistic of the estimated class counts against equal counts."""
    expected = batch_size / len(weights)
    return float(((weights * batch_size - expected) ** 2 / expected).sum())


def looks_balanced(weights: np.ndarray, batch_size: int) -> bool:
    """Whether estimated class proportions are consistent with equal class counts."""
    from scipy.stats import chi2

    return balance_statistic(weights, batch_size) <= float(chi2.ppf(BALANCE_LEVEL, len(weights) - 1))


def _refine(
    support: np.ndarray, labels: np.ndarray, num_classes: int, batch: np.ndarray, balanced: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The refinement rounds; returns the log-probabilities and the estimated class proportions."""
    known = np.eye(num_classes, dtype=np.float32)[labels]
    support_x, batch_x = transform(support, known, batch, balanced)
    centres = _weighted_means(known, support_x)
    weights = np.full(num_classes, 1.0 / num_classes, dtype=np.float32)
    everything = np.concatenate([support_x, batch_x])
    batch_squared = (batch_x**2).sum(1)[:, None]

    def assign(centres: np.ndarray) -> np.ndarray:
        distances = batch_squared + (centres**2).sum(1)[None, :] - 2 * batch_x @ centres.T
        scores = -SHARPNESS * np.maximum(distances, 0)  # squared Euclidean distances
        if balanced:
            return _sinkhorn(scores)
        return log_softmax(scores + np.log(weights))

    for _ in range(ROUNDS):
        assigned = np.exp(assign(centres))
        if not balanced:  # no class may vanish: a floor keeps a class with few inputs alive
            weights = np.maximum(assigned.mean(axis=0), np.float32(1e-3))
            weights = weights / weights.sum()
        centres = centres + STEP * (_weighted_means(np.concatenate([known, assigned]), everything) - centres)
    return assign(centres), weights


def _weighted_means(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(classes, dim) means of the rows of ``x``, weighted by the (n, classes) ``weights``."""
    return (weights.T @ x) / weights.sum(axis=0)[:, None]


def _sinkhorn(scores: np.ndarray) -> np.ndarray:
    """Log of the transport plan with rows summing to 1 and equal column totals."""
    rows, columns = scores.shape
    plan = np.exp(scores - scores.max()).astype(np.float64)
    for _ in range(SINKHORN_ITERATIONS):
        plan = plan * ((rows / columns) / np.maximum(plan.sum(axis=0), 1e-300))
        row_sums = plan.sum(axis=1, keepdims=True)
        plan = plan / np.maximum(row_sums, 1e-300)
        if float(np.abs(row_sums - 1).max()) < SINKHORN_TOLERANCE:
            break
    return np.log(np.maximum(plan, 1e-30)).astype(np.float32)
