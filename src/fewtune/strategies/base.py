"""What every strategy is: something that learns from support embeddings and scores new ones.

Strategies see embeddings, never images, so the same code classifies text once a sentence
encoder provides the embeddings.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fewtune.numeric import Seeded, softmax

if TYPE_CHECKING:
    from fewtune.features.backbones import Backbone


class Strategy(abc.ABC):
    """Base of all strategies (after easyfsl's ``FewShotClassifier``, as a real ABC).

    Subclasses set ``name``, take their hyperparameters as keyword arguments, and implement
    :meth:`fit`, :meth:`logits` and the array state used to save and load them. A strategy that
    also learns from the images themselves (``finetune``) overrides :meth:`adapt` and
    :attr:`learns_from_images`. Embeddings are NumPy arrays: features (n, dim) float32, labels
    (n,) int64; strategies on frozen embeddings never import torch.
    """

    name: ClassVar[str]

    @property
    def learns_from_images(self) -> bool:
        """Whether :meth:`adapt` may learn from the support images (and so needs them): a caller
        that must prepare the images beforehand (a benchmark episode's files, the threads to give
        a fit) asks this. False here: the default :meth:`adapt` never looks at them."""
        return False

    def adapt(
        self,
        backbone: Backbone,
        paths: list[Path],
        labels: np.ndarray,
        features: np.ndarray,
        num_classes: int,
        *,
        progress: bool = False,
        checkpoint: Path | None = None,
        resume: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> Backbone:
        """Learn from the support images themselves, before :meth:`fit`; returns the backbone to
        embed with from now on. The caller embeds the support set again with it when it is not
        ``backbone`` (which is never modified).

        This default returns ``backbone`` unchanged: strategies that learn from the images
        themselves (``finetune`` tunes the body) override it.

        Args:
            backbone: the backbone ``features`` came from.
            paths, labels: the support images and their classes (``labels`` in ``[0, num_classes)``);
                features: their embeddings, (n, dim).
            progress: show progress bars; notify: called with a one-line message before slow work.
            checkpoint, resume: a folder to save training progress to, and whether to continue
                from it.
        """
        return backbone

    @abc.abstractmethod
    def fit(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        """Learn from the support set. features: (n, dim); labels: (n,) in ``[0, num_classes)``."""

    @abc.abstractmethod
    def logits(self, features: np.ndarray) -> np.ndarray:
        """Unnormalised class scores. features: (n, dim) -> (n, num_classes)."""

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """JSON-serialisable settings, enough to rebuild the strategy with ``cls(**hp)``."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """Learned arrays, saved as safetensors."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def one_shot_temperature(self, features: np.ndarray, labels: np.ndarray) -> float:
        """The temperature when nothing can be held out (a class has one example): fitted on
        held-out predictions of *other* tasks instead, development episodes of the shared data
        (see docs/benchmarks.md, "one example per class"). 1 = the strategy's own scores."""
        return 1.0

    @property
    def body_tuned(self) -> bool:
        """Whether the embeddings this strategy scores come from a body it fine-tuned on the
        support images: then every support prediction was trained on, and the temperature is
        :meth:`tuned_body_temperature` (see :data:`fewtune.model.head.TUNED_BODY`)."""
        return False

    def tuned_body_temperature(self) -> float:
        """The temperature of a body this strategy tuned: nothing of the task is held out from it,
        so a rule measured on other tasks. 1 = the head's own scale."""
        return 1.0

    def fit_report(self) -> dict[str, Any]:
        """What fitting chose and why (e.g. a cross-validated setting), for config.json and the CLI."""
        return {}

    def held_out_logits(
        self, features: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> np.ndarray | None:
        """Logits of each support example from a copy fitted without it (stratified k-fold, k <= 5),
        for calibration; None when a class has a single example. Subclasses may do it cheaper."""
        counts = np.bincount(labels, minlength=num_classes)
        if int(counts.min()) < 2:
            return None
        fold = stratified_folds(labels, num_classes, min(5, int(counts.min())), seed=0)
        out = np.empty((len(labels), num_classes), dtype=np.float32)
        for f in range(int(fold.max()) + 1):
            copy = type(self)(**self.hyperparameters())
            copy.fit(features[fold != f], labels[fold != f], num_classes)
            out[fold == f] = copy.logits(features[fold == f])
        return out

    def held_out(
        self, features: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray, str] | None:
        """Predictions of support examples by a model not trained on them, for calibration:
        ``(logits, their labels, how they were made)``, or None when nothing can be held out.
        By default :meth:`held_out_logits` on every example."""
        logits = self.held_out_logits(features, labels, num_classes)
        return None if logits is None else (logits, labels, "held-out support predictions")

    def held_out_accuracy(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
        """Accuracy of :meth:`held_out` predictions: what ``auto`` compares candidates by
        (needs 2+ examples in every class)."""
        held_out = self.held_out(features, labels, num_classes)
        if held_out is None:
            raise ValueError("held-out accuracy needs 2+ examples in every class")
        logits, truth, _ = held_out
        return float((logits.argmax(1) == truth).mean())

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities, (n, num_classes), rows in the order of the classifier's classes."""
        return softmax(self.logits(features))


def check_support(features: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    """Fail early, with a readable message, on a support set no strategy can use."""
    if features.ndim != 2 or labels.shape != (features.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"expected features (n, dim) and integer labels (n,), got {tuple(features.shape)} "
            f"and {tuple(labels.shape)} {labels.dtype}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    present = np.bincount(labels, minlength=num_classes)
    if len(present) > num_classes or (present == 0).any():
        raise ValueError(
            f"every class in [0, {num_classes}) needs at least one example; counts: {present.tolist()}"
        )


def stratified_folds(labels: np.ndarray, num_classes: int, k: int, seed: int) -> np.ndarray:
    """(n,) fold index per example: each class's shuffled examples dealt round-robin into k folds."""
    generator = Seeded(seed)  # the folds torch.randperm dealt (see fewtune.numeric)
    fold = np.empty_like(labels)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        members = members[generator.randperm(len(members))]
        fold[members] = np.arange(len(members)) % k
    return fold
