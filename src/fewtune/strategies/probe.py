"""Transfer learning by feature extraction: a linear head trained on frozen embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np

from fewtune.geometry import between_class_similarity, normalize
from fewtune.numeric import Seeded, cross_entropy
from fewtune.strategies.base import Strategy, check_support, stratified_folds

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
#: Above this many support examples, cross-validation uses at most 3 folds and ...
LARGE_N = 100
#: ... at most this many classes (all their examples): the regularisation that suits a domain and a
#: number of shots does not hinge on the number of classes, while the cost of each fit grows with it.
CV_CLASSES = 20
#: L-BFGS tolerance on the projected gradient: a fit on at most LARGE_N examples, a fit on more
#: (the loss is a mean: its gradient shrinks with n), each cross-validation fit above LARGE_N (1e-5
#: and 1e-6 chose the same l2 with the same fold accuracies on 12 tasks of 400-1200 examples, 0.2 s
#: sooner), and each held-out fold for the temperature (warm-started from the final solution,
#: which saw the fold: a loose tolerance would leak it).
GTOL, LARGE_GTOL, CV_GTOL, FOLD_GTOL = 1e-9, 1e-7, 1e-5, 1e-6
#: Above LARGE_N examples, held-out predictions stop at the first folds that give this many: the
#: temperature is one number (at 60 x 20, one fold of 400 instead of three, 0.9 s less).
ENOUGH_HELD_OUT = 300
#: Below this many examples (and the embedding size) the weights are solved for in the span of the examples.
DUAL_MAX_N = 100


class Probe(Strategy):
    """Multinomial logistic regression on L2-normalised embeddings (the "linear probe").

    Class-balanced, L2-regularised, solved with full-batch L-BFGS in float64 from a zero start,
    so the same data always gives the same head. When every class has at least 3 examples the
    regularisation strength is chosen by stratified k-fold cross-validation over ``l2_grid``
    (on Omniglot 20-way 10-shot 1e-4 beats 1e-3 by 2.8 points, on Caltech-101 they tie: it has
    to be chosen); with fewer there is nothing to validate on and ``default_l2`` is used.

    The cost stays about linear in examples x classes: above ``LARGE_N`` examples the
    cross-validation uses 3 folds on at most ``CV_CLASSES`` classes, warm-started along the
    path of ``l2`` values, and the held-out logits for calibration are then computed at the
    chosen ``l2`` alone, each fold warm-started from the final solution, and only as many folds
    as calibration needs (see :meth:`held_out`).

    Args:
        l2: fixed regularisation strength; ``None`` chooses it as described above.
        default_l2: used when ``l2`` is None and cross-validation is impossible; 1e-3 measured best
            at 5-way 1-shot on Caltech-101 and Omniglot (1e-4..1e-2 within noise, 1e-1 and up worse).
        l2_grid: candidates for cross-validation.
        folds: at most this many folds (fewer when a class has fewer examples).
        seed: shuffles the folds (and picks the classes cross-validated on many classes).
        max_iter: cap on L-BFGS iterations per fit (high enough to converge: a low cap would act
            as hidden regularisation).
    """

    name = "probe"
    #: At 1 shot the temperature is the classes' mean between-class similarity, within these
    #: bounds: on development episodes (seed 0, 200 each of Caltech-101, 32-px Caltech and
    #: Omniglot, 5- and 20-way) the temperature each wanted rose with it, from 0.21 (Caltech,
    #: similarity 0.22) through 0.32-0.36 (32 px, 0.36) to 0.47-0.58 (Omniglot, 0.6); pooled ECE
    #: 1.4-4.9 against 2.3-27.7 for one temperature (0.5) everywhere. The bounds keep it on the
    #: under-confident side where the data stop (Omniglot 20-way wanted 0.47 at 0.6).
    ONE_SHOT_TEMPERATURE = (0.25, 0.5)

    def __init__(
        self,
        l2: float | None = None,
        default_l2: float = 1e-3,
        l2_grid: tuple[float, ...] | list[float] = L2_GRID,
        folds: int = 5,
        seed: int = 0,
        max_iter: int = 1000,
    ):
        if l2 is not None and not l2 > 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        if folds < 2:
            raise ValueError(f"folds must be >= 2, got {folds}")
        self.l2, self.default_l2, self.l2_grid = l2, float(default_l2), [float(x) for x in l2_grid]
        self.folds, self.seed, self.max_iter = int(folds), int(seed), int(max_iter)
        self.weight: np.ndarray | None = None  # (num_classes, dim)
        self.bias: np.ndarray | None = None  # (num_classes,)
        self._report: dict[str, Any] = {}
        self._held_out: np.ndarray | None = None  # cross-validated logits of the support set
        self._solution: tuple[float, np.ndarray] | None = None  # (l2, raw solution) of the last fit
        self._folds: dict[int, np.ndarray] = {}  # held-out logits of each refitted fold (many examples)

    def fit(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        check_support(features, labels, num_classes)
        x = normalize(features).astype(np.float64)
        self._held_out, self._folds = None, {}
        per_class = np.bincount(labels, minlength=num_classes)
        if self.l2 is not None:
            l2, self._report = self.l2, {"l2": self.l2, "l2_chosen_by": "user"}
        elif int(per_class.min()) >= 3:
            l2, scores = self._cross_validate(x, labels, num_classes, min(self.folds, int(per_class.min())))
            self._report = {"l2": l2, "l2_chosen_by": "cross-validation", "cv_accuracy": scores}
        else:
            l2, self._report = (
                self.default_l2,
                {"l2": self.default_l2, "l2_chosen_by": "default (< 3 examples in a class)"},
            )
        gtol = GTOL if len(labels) <= LARGE_N else LARGE_GTOL
        weight, bias, raw = _solve(x, labels, num_classes, l2, self.max_iter, gtol=gtol)
        self.weight, self.bias = weight.astype(np.float32), bias.astype(np.float32)
        self._solution = (l2, raw)

    def _cross_validate(
        self, x: np.ndarray, labels: np.ndarray, num_classes: int, k: int
    ) -> tuple[float, dict]:
        full = len(labels) <= LARGE_N
        if not full:  # many examples: 3 folds, on at most CV_CLASSES classes (relabelled 0..m-1)
            k = min(k, 3)
            if num_classes > CV_CLASSES:
                kept = Seeded(self.seed).randperm(num_classes)[:CV_CLASSES]
                relabel = np.full(num_classes, -1, dtype=np.int64)
                relabel[np.sort(kept)] = np.arange(CV_CLASSES)
                rows = relabel[labels] >= 0
                x, labels, num_classes = x[rows], relabel[labels[rows]], CV_CLASSES
        fold = stratified_folds(labels, num_classes, k, self.seed)
        grid = sorted(self.l2_grid, reverse=True)  # strongest first: each solve warm-starts the next
        logits = {l2: np.empty((len(labels), num_classes)) for l2 in grid}
        gtol = GTOL if full else CV_GTOL
        for f in range(k):
            train, test = fold != f, fold == f
            start = None
            for l2 in grid:
                w, b, start = _solve(x[train], labels[train], num_classes, l2, self.max_iter, start, gtol)
                logits[l2][test] = x[test] @ w.T + b
        results, held_out = {}, {}
        for l2 in self.l2_grid:
            correct = float((logits[l2].argmax(1) == labels).sum())
            results[l2] = (correct / len(labels), -cross_entropy(logits[l2], labels))
            held_out[l2] = logits[l2].astype(np.float32)
        best = max(self.l2_grid, key=lambda l2: results[l2])  # accuracy first, then likelihood
        if full:
            self._held_out = held_out[best]
        return best, {str(l2): round(acc, 4) for l2, (acc, _) in results.items()}

    def held_out_logits(
        self, features: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> np.ndarray | None:
        """Reuses the cross-validation predictions at the chosen l2 when fit() made them."""
        if self._held_out is not None and len(self._held_out) == len(labels):
            return self._held_out
        refitted = self._refit_folds(features, labels, num_classes, enough=len(labels))
        return super().held_out_logits(features, labels, num_classes) if refitted is None else refitted[0]

    def held_out(
        self, features: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray, str] | None:
        """Above ``LARGE_N`` examples, only the folds needed for ``ENOUGH_HELD_OUT`` predictions:
        they fit one number (the temperature) or make one comparison (``auto``'s), and each fold
        costs a solve about the size of the whole fit."""
        if self._held_out is not None and len(self._held_out) == len(labels):
            return self._held_out, labels, "held-out support predictions"
        refitted = self._refit_folds(features, labels, num_classes, enough=ENOUGH_HELD_OUT)
        if refitted is None:
            return super().held_out(features, labels, num_classes)
        logits, rows = refitted
        return logits, labels[rows], "held-out support predictions"

    def _refit_folds(
        self, features: np.ndarray, labels: np.ndarray, num_classes: int, enough: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Many examples: logits of the first 3-fold folds that hold ``enough`` examples, each fold
        solved at the chosen l2 alone, warm-started from the final solution; with the mask of
        their rows. None where fit() did not take the many-examples path."""
        counts = np.bincount(labels, minlength=num_classes)
        if self._solution is None or len(labels) <= LARGE_N or int(counts.min()) < 2:
            return None
        l2, solution = self._solution
        x = normalize(features).astype(np.float64)
        fold = stratified_folds(labels, num_classes, min(3, int(counts.min())), self.seed)
        out = np.empty((len(labels), num_classes), dtype=np.float32)
        rows = np.zeros(len(labels), dtype=bool)
        for f in range(int(fold.max()) + 1):
            train, test = fold != f, fold == f
            if f not in self._folds:
                w, b, _ = _solve(x[train], labels[train], num_classes, l2, self.max_iter, solution, FOLD_GTOL)
                self._folds[f] = (x[test] @ w.T + b).astype(np.float32)
            out[test], rows = self._folds[f], rows | test
            if int(rows.sum()) >= enough:
                break
        return out[rows], rows

    def logits(self, features: np.ndarray) -> np.ndarray:
        if self.weight is None or self.bias is None:
            raise RuntimeError("call fit() before logits()")
        return normalize(features) @ self.weight.T + self.bias

    def one_shot_temperature(self, features: np.ndarray, labels: np.ndarray) -> float:
        if self.l2 is not None:  # measured at the default l2 only
            return 1.0
        low, high = self.ONE_SHOT_TEMPERATURE
        return min(max(between_class_similarity(features, labels), low), high)

    def fit_report(self) -> dict[str, Any]:
        return dict(self._report)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "l2": self.l2, "default_l2": self.default_l2, "l2_grid": self.l2_grid,
            "folds": self.folds, "seed": self.seed, "max_iter": self.max_iter,
        }  # fmt: skip

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.weight is None or self.bias is None:
            raise RuntimeError("call fit() before state_dict()")
        return {"weight": self.weight, "bias": self.bias}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state["weight"].ndim != 2 or state["bias"].shape != state["weight"].shape[:1]:
            raise ValueError("weight must be (classes, dim) and bias (classes,)")
        self.weight, self.bias = state["weight"].astype(np.float32), state["bias"].astype(np.float32)


def _solve(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    l2: float,
    max_iter: int,
    start: np.ndarray | None = None,
    gtol: float = GTOL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise class-balanced cross-entropy + l2/2 * ||W||^2 (bias unpenalised). x: (n, dim) float64.

    With few examples (n < min(dim, DUAL_MAX_N)) the optimum lies in the span of the examples
    (representer theorem; of the centred examples, as the bias is free), so we solve for
    W = A @ (x - mean) with A: (num_classes, n) on the n x n Gram matrix: the same minimiser
    with far fewer unknowns. That form is worse conditioned (L-BFGS needs about 5x the
    iterations), so from DUAL_MAX_N examples up the weights are solved for
    directly: at 60 classes x 20 examples 40 iterations instead of thousands. The loss and its
    gradient are written out in NumPy for SciPy's L-BFGS-B: on small problems, per-call
    overhead is the cost.

    Returns the weight (num_classes, dim), the bias, and the raw solution to warm-start another
    solve: of the same data with another ``l2``, or (in the direct form) of a subset of it.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    counts = np.bincount(labels, minlength=num_classes)
    sample_weight = (len(labels) / (num_classes * np.maximum(counts, 1)))[labels]
    sample_weight /= sample_weight.sum()
    onehot = np.eye(num_classes)[labels]
    # the bias is not penalised, so shifting every example only moves the bias: centred examples
    # give the same weights from a far better conditioned problem (10-40% fewer iterations at
    # 60 x 20, up to 20x fewer at 5 x 5)
    centre = x.mean(axis=0)
    centred = x - centre
    dual = x.shape[0] < min(x.shape[1], DUAL_MAX_N)
    basis = centred @ centred.T if dual else centred  # (n, n) Gram matrix, or the examples themselves
    size = num_classes * basis.shape[1]

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, bias = theta[:size].reshape(num_classes, -1), theta[size:]
        scores = basis @ coef.T + bias  # (n, num_classes) = x @ W.T + b in both forms
        scores -= scores.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scores).sum(axis=1))
        loss = sample_weight @ (log_norm - (scores * onehot).sum(axis=1))
        residual = sample_weight[:, None] * (np.exp(scores - log_norm[:, None]) - onehot)
        shrink = coef @ basis if dual else coef  # ||W||^2 = tr(A K A^T) in the dual form
        loss += 0.5 * l2 * (shrink * coef).sum()
        grad_coef = residual.T @ basis + l2 * shrink
        return loss, np.concatenate([grad_coef.ravel(), residual.sum(axis=0)])

    if start is None or len(start) != size + num_classes:
        start = np.zeros(size + num_classes)
    # threads slow down small matrices, and on a busy machine large ones too (60 x 20: 6x slower)
    with threadpool_limits(limits=1, user_api="blas"):
        options = {"maxiter": max_iter, "gtol": gtol, "ftol": 1e-12 if gtol <= 1e-8 else 1e-10}
        result = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", options=options)
    coef, bias = result.x[:size].reshape(num_classes, -1), result.x[size:]
    weight = coef @ centred if dual else coef
    return weight, bias - weight @ centre, result.x
