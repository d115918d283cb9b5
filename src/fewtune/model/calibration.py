"""Confidence that means what it says: temperature scaling fitted on held-out support predictions."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fewtune.numeric import cross_entropy, log_softmax

#: the search range of log T; a fit that ends on either bound is reported as such
LOG_T_BOUNDS = (-4.0, 4.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The T > 0 minimising the cross-entropy of softmax(logits / T) (Guo et al. 2017, "On
    Calibration of Modern Neural Networks") against *smoothed* targets, searched on log T.

    A handful of held-out predictions that are all right cannot prove certainty, yet plain NLL
    then drives T to its lower bound and every probability to 1 (seen: T = 0.024 on 25 Caltech
    photos). So, as Platt (1999) does for his sigmoid, the target of the right class is
    (n + 1/2) / (n + 1) for n held-out predictions rather than 1 (the rest shared by the other
    classes): the estimate after n successes under Jeffreys' prior. Laplace's (n + 1) / (n + 2),
    used before, left 5-shot answers under-confident: on 60 development episodes (seed 0, 5-way
    5-shot, pooled) ECE 4.7-7.3 against 2.4-4.2 now, for `probe` and `prototype` on Caltech-101,
    Omniglot and 32-px Caltech. With many predictions the targets tend to one-hot and the fit to
    plain temperature scaling.

    Args:
        logits: (n, num_classes) held-out logits; labels: (n,) their true classes.
    """
    logits = np.asarray(logits, dtype=np.float64)
    n, num_classes = logits.shape
    right = (n + 0.5) / (n + 1)
    targets = np.full((n, num_classes), (1 - right) / max(num_classes - 1, 1))
    targets[np.arange(n), labels] = right

    def loss(log_t: float) -> float:
        return float(-(targets * log_softmax(logits / math.exp(log_t))).sum(axis=1).mean())

    def nll(log_t: float) -> float:
        return cross_entropy(logits / math.exp(log_t), labels)

    low, high = LOG_T_BOUNDS
    log_t = golden_section(loss, low, high, tolerance=1e-4)
    temperature = math.exp(log_t)
    report = {
        "temperature": round(temperature, 6),
        "held_out_predictions": n,
        "target_of_right_class": round(right, 4),
        "nll_before": round(nll(0.0), 4),
        "nll_after": round(nll(log_t), 4),
    }
    if min(log_t - low, high - log_t) < 1e-2:
        report["on_search_bound"] = True
    return temperature, report


def golden_section(function: Callable[[float], float], low: float, high: float, tolerance: float) -> float:
    """The minimum of a unimodal function on [low, high], to ``tolerance``: the smoothed
    cross-entropy is convex in log T. (SciPy's bounded search did the same, but importing
    scipy.optimize cost ~0.5 s of every warm ``train``.)"""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = function(c), function(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = function(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = function(d)
    return (a + b) / 2


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Weighted gap between confidence and accuracy over equal-width confidence bins (Naeini et al. 2015)."""
    probabilities = np.asarray(probabilities)
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    correct = (predicted == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1, dtype=np.float32)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += float(
                inside.mean() * abs(confidence[inside].astype(np.float64).mean() - correct[inside].mean())
            )
    return error
