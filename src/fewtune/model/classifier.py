"""A trained classifier: backbone + strategy + class names, saved as a folder with no pickle.

The folder layout, the atomic save and the checked load live in :mod:`fewtune.storage.saved_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewtune._version import __version__
from fewtune.features.backbones import Backbone
from fewtune.model.calibration import fit_temperature
from fewtune.errors import FewtuneError
from fewtune.data.inputs import ImageInput, embed_items, expand
from fewtune.model import transduction
from fewtune.model.openset import calibrate_threshold, novelty, unknown_probability
from fewtune.storage.schema import FORMAT as FORMAT
from fewtune.storage.schema import FORMAT_VERSION as FORMAT_VERSION
from fewtune.strategies import Strategy
from fewtune.strategies.base import class_means

DEFAULT_UNKNOWN_LABEL = "unknown"


@dataclass(frozen=True)
class Prediction:
    """One input's result.

    Attributes:
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


@dataclass
class OpenSet:
    """How the classifier answers "none of these".

    Attributes:
        enabled: reject inputs whose novelty is above ``threshold``.
        threshold: calibrated from the support set by :func:`fewtune.model.openset.calibrate_threshold`.
        unknown_label: the label a rejected input gets; no class may have this name.
        calibration: how the threshold was chosen.
    """

    enabled: bool = True
    threshold: float = math.inf
    unknown_label: str = DEFAULT_UNKNOWN_LABEL
    calibration: dict[str, Any] = field(default_factory=dict)


@dataclass(repr=False)
class Classifier:
    """Classifies images into ``classes``; build one with :func:`fewtune.train` or :func:`fewtune.load`.

    Attributes:
        support_features: (n, dim) embeddings it was fitted on; support_labels: (n,). Kept so
            classes can be added or removed later without the original images.
        fit_report: what fitting chose and why (see :meth:`Strategy.fit_report`).
        temperature: divides the strategy's logits so probabilities are calibrated.
        calibration: how ``temperature`` was fitted.
        training: summary of the data it was trained on (counts, skipped files, duplicates...).
        pretrained: when ``backbone`` was fine-tuned, the pretrained backbone it came from;
            novelty ("none of these") is measured on its embeddings (see :mod:`fewtune.model.openset`).
        pretrained_support: (n, dim) the support images' embeddings by ``pretrained``.
    """

    backbone: Backbone
    strategy: Strategy
    classes: list[str]
    support_features: torch.Tensor
    support_labels: torch.Tensor
    fit_report: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)
    open_set: OpenSet = field(default_factory=OpenSet)
    training: dict[str, Any] = field(default_factory=dict)
    pretrained: Backbone | None = None
    pretrained_support: torch.Tensor | None = None

    @property
    def novelty_support(self) -> torch.Tensor:
        """The support embeddings novelty is measured against: never ones a tuned body was trained on."""
        return self.support_features if self.pretrained_support is None else self.pretrained_support

    @property
    def classes_(self) -> np.ndarray:
        """The class names as scikit-learn names them: the columns of :meth:`predict_proba`."""
        return np.array(self.classes, dtype=object)

    def __repr__(self) -> str:
        """One line: the default dataclass repr printed every support embedding (18 KB)."""
        shown = ", ".join(repr(c) for c in self.classes[:5]) + (f", ... ({len(self.classes)} in all)" if len(self.classes) > 5 else "")
        chosen = self.fit_report.get("chosen")
        strategy = f"{self.strategy.name!r}" + (f" (chose {chosen!r})" if chosen else "")
        return (
            f"Classifier(strategy={strategy}, classes=[{shown}], backbone={self.backbone.name!r}, "
            f"examples={len(self.support_labels)})"
        )

    def refit(self) -> None:
        """Fit the strategy, the temperature and the unknown threshold on the support set.

        Both are fitted on predictions the model was not trained on: the temperature on the
        strategy's held-out predictions (see :meth:`Strategy.held_out`), the threshold on
        leave-one-out novelty of pretrained embeddings.
        """
        check_class_names(self.classes, self.open_set.unknown_label)
        features, labels, num_classes = self.support_features, self.support_labels, len(self.classes)
        self.strategy.fit(features, labels, num_classes)
        self.fit_report = self.strategy.fit_report()
        held_out = self.strategy.held_out(features, labels, num_classes)
        if held_out is None and self.pretrained is not None and "fine-tune" in self.calibration.get("method", ""):
            # classes changed since the body was tuned: its held-out predictions are gone, the
            # temperature they gave still describes how confident the tuned body is
            self.calibration = {**self.calibration, "kept": "classes changed since fine-tuning"}
        elif held_out is None:
            self.temperature, self.calibration = 1.0, {"temperature": 1.0, "method": "none (nothing to hold out: a class has one example)"}
        else:
            logits, truth, how = held_out
            self.temperature, self.calibration = fit_temperature(logits, truth)
            self.calibration["method"] = f"temperature scaling on {how}"
        threshold, how = calibrate_threshold(self.novelty_support, labels, num_classes)
        self.open_set = replace(self.open_set, threshold=threshold, calibration=how)

    def embed(
        self, inputs: ImageInput | list[ImageInput], *, skip_bad: bool = False, progress: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Embeddings of the inputs for the strategy and for novelty (the same tensor unless the
        body was fine-tuned), and the indices (into ``expand(inputs)``) of the images kept: all
        unless ``skip_bad``."""
        items = expand(inputs)
        features, kept = embed_items(self.backbone, items, skip_bad=skip_bad, progress=progress)
        position = {id(item): i for i, item in enumerate(items)}
        indices = [position[id(item)] for item in kept]
        if self.pretrained is None:
            return features, features, indices
        pretrained, _ = embed_items(self.pretrained, kept, progress=progress)
        return features, pretrained, indices

    def predict(
        self,
        inputs: ImageInput | list[ImageInput],
        top_k: int = 1,
        *,
        skip_bad: bool = False,
        progress: bool = False,
        open_set: bool | None = None,
        unknown_threshold: float | None = None,
        unknown_label: str | None = None,
        transductive: bool | str = False,
    ) -> list[Prediction]:
        """Classify images: files, folders, glob patterns, or pictures in memory.

        Args:
            inputs: one of, or a list mixing: a path, a folder (recursive), a glob, a ``PIL.Image``,
                a NumPy H x W x C (or H x W) uint8 array, a torch C x H x W tensor (uint8, or float in
                [0, 1]). Results are in input order; a picture in memory is named ``<image N>``.
            skip_bad: leave unreadable files out of the result instead of raising.
            open_set, unknown_threshold, unknown_label: override the saved :class:`OpenSet` settings.
            transductive: classify the inputs together, with the classes refined on them: ``True``,
                or ``"balanced"`` when the inputs hold about as many images of each class (see
                :mod:`fewtune.model.transduction`); best for a batch of many unlabelled images.
        """
        items = expand(inputs)
        features, pretrained, kept = self.embed(items, skip_bad=skip_bad, progress=progress)
        predictions = self.predict_features(
            features, top_k, open_set=open_set, unknown_threshold=unknown_threshold,
            unknown_label=unknown_label, transductive=transductive, pretrained_features=pretrained,
        )  # fmt: skip
        return [replace(p, path=items[i].name) for p, i in zip(predictions, kept)]

    def predict_features(
        self,
        features: torch.Tensor,
        top_k: int = 1,
        *,
        open_set: bool | None = None,
        unknown_threshold: float | None = None,
        unknown_label: str | None = None,
        transductive: bool | str = False,
        pretrained_features: torch.Tensor | None = None,
    ) -> list[Prediction]:
        """:meth:`predict` for embeddings already computed by this classifier's backbone (paths
        empty). ``pretrained_features``: the same inputs embedded by :attr:`pretrained`, required
        when the body was fine-tuned (novelty is measured on them)."""
        settings = self.open_set
        reject = settings.enabled if open_set is None else open_set
        threshold = settings.threshold if unknown_threshold is None else unknown_threshold
        unknown = settings.unknown_label if unknown_label is None else unknown_label
        probabilities = self.predict_proba_features(features)  # the inductive answer
        if transductive and len(features) >= 2:
            support, labels, num_classes = self.support_features, self.support_labels, len(self.classes)
            if transductive == "balanced":
                probabilities = transduction.log_probabilities(support, labels, num_classes, features, True).exp()
            elif (decided := transduction.decide(support, labels, num_classes, features)) is not None:
                probabilities = decided[0].exp()  # else: refining does not pay for this batch, the inductive answer stands
        novelty = self.novelty_features(features if pretrained_features is None else pretrained_features)
        doubt = unknown_probability(novelty, threshold, float(settings.calibration.get("spread", 0.05)))
        k = max(1, min(top_k, len(self.classes)))
        scores, indices = probabilities.topk(k, dim=1)
        results = []
        for row in range(len(features)):
            ranked = [(self.classes[c], round(float(s), 6)) for s, c in zip(scores[row], indices[row])]
            is_unknown = bool(reject and novelty[row] > threshold)
            results.append(
                Prediction(
                    path="",
                    label=unknown if is_unknown else ranked[0][0],
                    score=round(float(doubt[row]), 6) if is_unknown else ranked[0][1],
                    top_k=ranked,
                    probabilities={c: round(float(p), 6) for c, p in zip(self.classes, probabilities[row])},
                    novelty=round(float(novelty[row]), 6),
                    is_unknown=is_unknown,
                    nearest=ranked[0][0],
                    unknown_probability=round(float(doubt[row]), 6) if reject else 0.0,
                )
            )
        return results

    def predict_proba(self, inputs: ImageInput | list[ImageInput]) -> np.ndarray:
        """(n, num_classes) calibrated probabilities, columns in the order of ``classes_``.

        Takes what :meth:`predict` takes; one row per image, in input order (a folder gives a row per file).
        """
        features, _ = embed_items(self.backbone, expand(inputs))
        return self.predict_proba_features(features).numpy()

    def predict_proba_features(self, features: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities from embeddings already computed by this classifier's backbone."""
        if features.shape[0] == 0:
            return torch.empty(0, len(self.classes))
        return (self.strategy.logits(features) / self.temperature).softmax(dim=1)

    def novelty_features(self, features: torch.Tensor) -> torch.Tensor:
        """(n,) novelty of each embedding (see :mod:`fewtune.model.openset`). When the body was
        fine-tuned, pass embeddings by :attr:`pretrained`, not by the tuned backbone."""
        if features.shape[0] == 0:
            return torch.empty(0)
        return novelty(features, class_means(self.novelty_support, self.support_labels, len(self.classes)))

    def add_examples(self, label: str, inputs: ImageInput | list[ImageInput], *, progress: bool = False) -> int:
        """Add a class from one or more examples, or more examples to a class, and refit.

        Exact for ``prototype``; ``probe`` refits its head on the stored embeddings, in seconds.
        Returns how many images were added.
        """
        check_class_names([*self.classes, label], self.open_set.unknown_label)
        features, pretrained, kept = self.embed(inputs, progress=progress)
        self.add_features(label, features, pretrained_features=pretrained)
        return len(kept)

    def add_features(self, label: str, features: torch.Tensor, *, pretrained_features: torch.Tensor | None = None) -> None:
        """:meth:`add_examples` for embeddings already computed by this classifier's backbone
        (and by :attr:`pretrained`, required when the body was fine-tuned)."""
        check_class_names([*self.classes, label], self.open_set.unknown_label)
        if self.pretrained_support is not None and pretrained_features is None:
            raise ValueError("this classifier's body was fine-tuned: pass pretrained_features too")
        if label not in self.classes:
            self.classes.append(label)
        index = self.classes.index(label)
        self.support_features = torch.cat([self.support_features, features])
        if self.pretrained_support is not None:
            self.pretrained_support = torch.cat([self.pretrained_support, pretrained_features])
        self.support_labels = torch.cat([self.support_labels, torch.full((len(features),), index)])
        self.training.setdefault("per_class", {})[label] = int((self.support_labels == index).sum())
        self.refit()

    def remove_class(self, label: str) -> None:
        """Forget a class and its examples, and refit on the rest."""
        if label not in self.classes:
            raise FewtuneError(f"no class {label!r} to remove; the classes are {', '.join(self.classes)}")
        if len(self.classes) <= 2:
            raise FewtuneError(f"cannot remove {label!r}: a classifier needs at least two classes; add another first")
        index = self.classes.index(label)
        keep = self.support_labels != index
        self.support_features = self.support_features[keep]
        if self.pretrained_support is not None:
            self.pretrained_support = self.pretrained_support[keep]
        self.support_labels = self.support_labels[keep] - (self.support_labels[keep] > index).long()
        self.classes.pop(index)
        self.training.get("per_class", {}).pop(label, None)
        self.refit()

    def config(self) -> dict[str, Any]:
        """Everything that describes this classifier, as saved in ``config.json``."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fewtune_version": __version__,
            "classes": list(self.classes),
            "backbone": {
                "name": self.backbone.name,
                "timm_name": self.backbone.timm_name,
                "weights_sha256": self.backbone.weights_sha256,
                "weights_source": self.backbone.weights_source,
                "embedding_dim": self.backbone.dim,
                "tuned_sha256": self.backbone.tuned_sha256,
            },
            "preprocessing": self.backbone.preprocessing,
            "strategy": {
                "name": self.strategy.name,
                "hyperparameters": self.strategy.hyperparameters(),
                "fit": self.fit_report,
            },
            "calibration": {**self.calibration, "temperature": self.temperature},
            "open_set": {
                "enabled": self.open_set.enabled,
                "threshold": self.open_set.threshold,
                "unknown_label": self.open_set.unknown_label,
                "calibration": self.open_set.calibration,
            },
            "training": self.training,
        }

    def save(self, path: str | Path) -> Path:
        """Write the classifier folder under the model's lock, replacing any previous one in one
        step: a reader, or a crash at any point, sees the whole old model or the whole new one
        (see :mod:`fewtune.storage.saved_model`)."""
        from fewtune.storage import saved_model as storage

        return storage.save(self, path)


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check a saved classifier's ``config.json`` without loading any network."""
    from fewtune.storage import saved_model as storage

    return storage.read_config(path)


def load(path: str | Path, backbone: Backbone | None = None) -> Classifier:
    """Load a saved classifier (see :func:`fewtune.storage.saved_model.load`). Nothing in the folder can run code.

    Args:
        backbone: reuse an already-built backbone; it must have the same weights hash.
    """
    from fewtune.storage import saved_model as storage

    return storage.load(path, backbone)


def check_class_names(classes: list[str], unknown_label: str) -> None:
    """Class names must be non-empty, distinct from the label given to rejected inputs."""
    for name in classes:
        if not name or name != name.strip():
            raise FewtuneError(f"class name {name!r} is empty or has surrounding spaces; rename it")
        if name == unknown_label:
            raise FewtuneError(
                f"a class is named {name!r}, the label given to inputs of no known class; rename the class "
                f"or choose another with --unknown-label"
            )
