"""Confidence that means what it says: temperature scaling fitted on held-out support predictions."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F



def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[str, Any]]:
    """The T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017, "On Calibration of
    Modern Neural Networks"), searched on log T in [-4, 4]."""
    from scipy.optimize import minimize_scalar

    logits = logits.double()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    best = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-4})
    temperature = math.exp(best.x)
    return temperature, {"temperature": round(temperature, 6), "nll_before": round(nll(0.0), 4), "nll_after": round(nll(best.x), 4)}


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Weighted gap between confidence and accuracy over equal-width confidence bins (Naeini et al. 2015)."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += float(inside.double().mean() * (confidence[inside].double().mean() - correct[inside].mean()).abs())
    return error
