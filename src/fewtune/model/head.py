"""Everything a classifier knows past its backbone, working on embeddings only.

A :class:`Head` is a strategy with its temperature, its unknown threshold and the support
embeddings it was fitted on. Every entry point (the Python API, the CLI, the server, evaluation)
predicts through :meth:`Head.predict`, so an answer is computed one way wherever it is asked
for; the classifier only turns inputs into :class:`Embeddings` and hands them on. Nothing here
sees an image, so a sentence encoder's embeddings would do as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fewtune.errors import FewtuneError
from fewtune.geometry import between_class_similarity, class_means
from fewtune.model import transduction
from fewtune.model.calibration import fit_temperature
from fewtune.model.openset import OpenSet, calibrate_threshold, novelty, unknown_probability
from fewtune.model.prediction import Prediction
from fewtune.numeric import softmax
from fewtune.strategies.base import Strategy

#: Why a fine-tuned body keeps temperature 1 (its cosine head's own scale). A temperature fitted on
#: images held out of the cross-fitted tune (a body tuned on half of each class) made the body
#: tuned on all of them under-confident: Omniglot 5-way 5-shot development episodes (seed 0, 16
#: tuned tasks), pooled ECE 2.4 at T = 1 against 7.8 with that temperature (fitted 1.05-2.8); on
#: 25 other episodes 2.7 against 6.8. See docs/benchmarks.md.
TUNED_BODY = (
    "none: a fine-tuned body keeps its head's own scale (a temperature from the cross-fitted tune, "
    "a body tuned on half the images, made it under-confident)"
)

TUNED_ONE_SHOT = (
    "held-out predictions of other tasks (a body tuned on one example a class is over-confident "
    "at its head's own scale)"
)


@dataclass(frozen=True)
class Embeddings:
    """A batch of inputs as a head sees them.

    Attributes:
        features: (n, dim) by the classifier's backbone: what the strategy scores.
        novelty: (n, dim) the same inputs by the *pretrained* backbone: what "none of these" is
            measured on (see :mod:`fewtune.model.openset`). The same array unless the body was
            fine-tuned, whose embeddings of its own training images sit too tight to judge by.
    """

    features: np.ndarray
    novelty: np.ndarray

    @classmethod
    def frozen(cls, features: np.ndarray) -> Embeddings:
        """Embeddings by a pretrained backbone: one array serves both purposes."""
        return cls(features, features)

    def __len__(self) -> int:
        return len(self.features)

    def select(self, index: np.ndarray | list[int]) -> Embeddings:
        return Embeddings(self.features[index], self.novelty[index])

    def extend(self, other: Embeddings) -> Embeddings:
        return Embeddings(
            np.concatenate([self.features, other.features]), np.concatenate([self.novelty, other.novelty])
        )


@dataclass(repr=False)
class Head:
    """Strategy + temperature + unknown threshold + the support embeddings they were fitted on.

    Attributes:
        support, labels: the embeddings fitted on, (n,) labels in ``[0, len(classes))``; kept so
            classes can be added or removed later without the original images.
        fit_report: what fitting chose and why (see :meth:`Strategy.fit_report`).
        temperature: divides the strategy's logits so probabilities are calibrated; calibration: how.
    """

    strategy: Strategy
    classes: list[str]
    support: Embeddings
    labels: np.ndarray
    open_set: OpenSet = field(default_factory=OpenSet)
    temperature: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)
    fit_report: dict[str, Any] = field(default_factory=dict)
    _prototypes: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def around(cls, strategy: Strategy, features: np.ndarray, labels: np.ndarray, num_classes: int) -> Head:
        """A head on a strategy already fitted to ``features``, for closed-set scoring (benchmark,
        compare): temperature 1 and no calibration, which leave every answer's class unchanged."""
        classes = [str(c) for c in range(num_classes)]
        return cls(strategy, classes, Embeddings.frozen(features), labels, OpenSet(enabled=False))

    def fit(self) -> None:
        """Fit the strategy, then the temperature and the unknown threshold on predictions the
        model was not trained on: the strategy's held-out predictions (see
        :meth:`Strategy.held_out`; a fine-tuned body keeps T = 1, see ``TUNED_BODY``, or
        above it when tuned on one example a class) and
        leave-one-out novelty of pretrained embeddings."""
        check_class_names(self.classes, self.open_set.unknown_label)
        features, labels, num_classes = self.support.features, self.labels, len(self.classes)
        self._prototypes = None
        self.strategy.fit(features, labels, num_classes)
        self.fit_report = self.strategy.fit_report()
        if self.strategy.body_tuned:
            self.temperature = self.strategy.tuned_body_temperature()
            method = TUNED_BODY if self.temperature == 1.0 else TUNED_ONE_SHOT
            self.calibration = {"temperature": self.temperature, "method": method, "tuned_body": True}
        elif (held_out := self.strategy.held_out(features, labels, num_classes)) is None:  # 1 example
            self.temperature = self.strategy.one_shot_temperature(features, labels)
            similarity = between_class_similarity(features, labels)
            how = (
                "held-out predictions of other tasks, by how alike the classes look (between-class "
                f"similarity {similarity:.2f}; one example a class here: none of its own to hold out)"
                if self.temperature != 1.0
                else "none (nothing to hold out: a class has one example)"
            )
            self.calibration = {"temperature": self.temperature, "method": how}
        else:
            logits, truth, how = held_out
            self.temperature, self.calibration = fit_temperature(logits, truth)
            self.calibration["method"] = f"temperature scaling on {how}"
        threshold, how_threshold = calibrate_threshold(self.support.novelty, labels, num_classes)
        self.open_set = replace(self.open_set, threshold=threshold, calibration=how_threshold)

    def probabilities(self, features: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """(n, num_classes) calibrated probabilities of embeddings by the classifier's backbone
        (``temperature=1.0``: the strategy's own, uncalibrated, for comparison)."""
        if features.shape[0] == 0:
            return np.empty((0, len(self.classes)), dtype=np.float32)
        scale = self.temperature if temperature is None else temperature
        return softmax(self.strategy.logits(features) / np.float32(scale))

    def novelty(self, pretrained: np.ndarray) -> np.ndarray:
        """(n,) novelty of embeddings by the pretrained backbone (see :mod:`fewtune.model.openset`)."""
        if pretrained.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        if self._prototypes is None:  # the support changes only through fit()
            self._prototypes = class_means(self.support.novelty, self.labels, len(self.classes))
        return novelty(pretrained, self._prototypes)

    def predict(
        self,
        batch: Embeddings,
        names: Sequence[str],
        top_k: int = 1,
        *,
        open_set: bool | None = None,
        unknown_threshold: float | None = None,
        unknown_label: str | None = None,
        transductive: bool | str = False,
    ) -> list[Prediction]:
        """One :class:`Prediction` per row of ``batch``, named by ``names``.

        Args:
            open_set, unknown_threshold, unknown_label: override the saved :class:`OpenSet`.
            transductive: classify the batch together with the strategy's classes refined on it
                (:mod:`fewtune.model.transduction`): ``True`` lets the batch decide how (or keep
                the inductive answer where refining does not pay), ``"balanced"`` assumes about as
                many inputs of each class.
        """
        settings = self.open_set
        reject = settings.enabled if open_set is None else open_set
        threshold = settings.threshold if unknown_threshold is None else unknown_threshold
        unknown = settings.unknown_label if unknown_label is None else unknown_label
        probabilities = self.probabilities(batch.features)  # the inductive answer
        if transductive:
            refined = self._transductive(batch.features, transductive, probabilities.argmax(1))
            probabilities = probabilities if refined is None else refined
        scores_novelty = self.novelty(batch.novelty)
        doubt = unknown_probability(
            scores_novelty, threshold, float(settings.calibration.get("spread", 0.05))
        )
        k = max(1, min(top_k, len(self.classes)))
        top_indices = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(probabilities, top_indices, axis=1).tolist()
        top_indices = top_indices.tolist()
        # plain floats once: indexing arrays element by element was most of the head's time
        rows, novelties, doubts = probabilities.tolist(), scores_novelty.tolist(), doubt.tolist()
        results = []
        for row, name in enumerate(names):
            ranked = [
                (self.classes[c], round(s, 6)) for s, c in zip(top_scores[row], top_indices[row], strict=True)
            ]
            is_unknown = bool(reject and novelties[row] > threshold)
            results.append(
                Prediction(
                    path=name,
                    label=unknown if is_unknown else ranked[0][0],
                    score=round(doubts[row], 6) if is_unknown else ranked[0][1],
                    top_k=ranked,
                    probabilities={c: round(p, 6) for c, p in zip(self.classes, rows[row], strict=True)},
                    novelty=round(novelties[row], 6),
                    is_unknown=is_unknown,
                    nearest=ranked[0][0],
                    unknown_probability=round(doubts[row], 6) if reject else 0.0,
                )
            )
        return results

    def _transductive(
        self, features: np.ndarray, mode: bool | str, inductive: np.ndarray
    ) -> np.ndarray | None:
        """Probabilities of the batch refined on itself, or None where the inductive answer
        (``inductive``: its classes) stands."""
        if len(features) < 2:
            return None
        support, labels, num_classes = self.support.features, self.labels, len(self.classes)
        if mode == "balanced":
            return np.exp(transduction.log_probabilities(support, labels, num_classes, features, True))
        decided = transduction.decide(support, labels, num_classes, features, inductive)
        return None if decided is None else np.exp(decided[0])

    def add(self, label: str, batch: Embeddings) -> None:
        """Add a class from one or more examples, or more examples to a class, and refit."""
        check_class_names([*self.classes, label], self.open_set.unknown_label)
        if label not in self.classes:
            self.classes.append(label)
        index = self.classes.index(label)
        self.support = self.support.extend(batch)
        self.labels = np.concatenate([self.labels, np.full(len(batch), index, dtype=np.int64)])
        self.fit()

    def remove(self, label: str) -> None:
        """Forget a class and its examples, and refit on the rest."""
        if label not in self.classes:
            raise FewtuneError(f"no class {label!r} to remove; the classes are {', '.join(self.classes)}")
        if len(self.classes) <= 2:
            raise FewtuneError(
                f"cannot remove {label!r}: a classifier needs at least two classes; add another first"
            )
        index = self.classes.index(label)
        keep = self.labels != index
        self.support = self.support.select(np.flatnonzero(keep))
        self.labels = self.labels[keep] - (self.labels[keep] > index).astype(np.int64)
        self.classes.pop(index)
        self.fit()

    def counts(self) -> dict[str, int]:
        """Examples per class, in class order."""
        return dict(
            zip(self.classes, np.bincount(self.labels, minlength=len(self.classes)).tolist(), strict=True)
        )


def check_class_names(classes: list[str], unknown_label: str) -> None:
    """Class names must be non-empty, distinct from the label given to rejected inputs."""
    for name in classes:
        if not name or name != name.strip():
            raise FewtuneError(f"class name {name!r} is empty or has surrounding spaces; rename it")
        if not name.isprintable():  # a newline would break every line and table a name is printed in
            raise FewtuneError(f"class name {name!r} holds a newline or another control character; rename it")
        if name == unknown_label:
            raise FewtuneError(
                f"a class is named {name!r}, the label given to inputs of no known class; rename the class "
                f"or choose another with --unknown-label"
            )
