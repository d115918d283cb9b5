"""A trained classifier: backbone + strategy + class names, saved as a folder with no pickle.

Layout of ``name.fewtune/``::

    config.json             format version, backbone + weights sha256, preprocessing,
                            strategy + hyperparameters, ordered classes, training summary
    strategy.safetensors    the strategy's learned tensors
    support.safetensors     support embeddings and labels (to refit or add classes later)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fewtune._version import __version__
from fewtune.backbones import REGISTRY, Backbone, create_backbone
from fewtune.dataset import collect_inputs
from fewtune.errors import FewtuneError
from fewtune.features import embed_files
from fewtune.strategies import Strategy, create_strategy

FORMAT = "fewtune-classifier"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Prediction:
    """One input's result. ``top_k`` holds ``(label, probability)`` pairs, best first."""

    path: str
    label: str
    score: float
    top_k: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape scripts rely on: ``path, label, score, top_k: [{label, score}]``."""
        return {
            "path": self.path,
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
        }


@dataclass
class Classifier:
    """Classifies images into ``classes``; build one with :func:`fewtune.train` or :func:`fewtune.load`.

    Attributes:
        support_features: (n, dim) embeddings it was fitted on; support_labels: (n,).
        fit_report: what fitting chose and why (see :meth:`Strategy.fit_report`).
        training: summary of the data it was trained on (counts, skipped files, duplicates...).
    """

    backbone: Backbone
    strategy: Strategy
    classes: list[str]
    support_features: torch.Tensor
    support_labels: torch.Tensor
    fit_report: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def predict(
        self, inputs: list[str | Path] | str | Path, top_k: int = 1, *, skip_bad: bool = False, progress: bool = False
    ) -> list[Prediction]:
        """Classify image files, folders or glob patterns. Unreadable files raise, or with
        ``skip_bad`` are left out of the result."""
        paths = collect_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
        embedded = embed_files(self.backbone, paths, skip_bad=skip_bad, progress=progress)
        probabilities = self.predict_proba_features(embedded.features)
        k = max(1, min(top_k, len(self.classes)))
        scores, indices = probabilities.topk(k, dim=1)
        results = []
        for row, i in enumerate(embedded.kept):
            ranked = [(self.classes[c], round(float(s), 6)) for s, c in zip(scores[row], indices[row])]
            results.append(Prediction(str(paths[i]), ranked[0][0], ranked[0][1], ranked))
        return results

    def predict_proba(self, inputs: list[str | Path]) -> np.ndarray:
        """(n, num_classes) probabilities, columns in the order of ``classes``."""
        embedded = embed_files(self.backbone, collect_inputs(list(inputs)))
        return self.predict_proba_features(embedded.features).numpy()

    def predict_proba_features(self, features: torch.Tensor) -> torch.Tensor:
        """Probabilities from embeddings already computed by this classifier's backbone."""
        if features.shape[0] == 0:
            return torch.empty(0, len(self.classes))
        return self.strategy.predict_proba(features)

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
            },
            "preprocessing": self.backbone.preprocessing,
            "strategy": {
                "name": self.strategy.name,
                "hyperparameters": self.strategy.hyperparameters(),
                "fit": self.fit_report,
            },
            "training": self.training,
        }

    def save(self, path: str | Path) -> Path:
        """Write the classifier folder atomically: a crash mid-save leaves the previous one intact."""
        path = Path(path)
        if path.exists() and not (path / "config.json").is_file() and (path.is_file() or any(path.iterdir())):
            raise FewtuneError(f"{path}: exists and is not a fewtune classifier; choose another output path")
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        try:
            _write_json(staging / "config.json", self.config())
            save_file({k: v.contiguous() for k, v in self.strategy.state_dict().items()}, staging / "strategy.safetensors")
            support = {"features": self.support_features.contiguous(), "labels": self.support_labels.contiguous()}
            save_file(support, staging / "support.safetensors")
            for file in staging.iterdir():
                _fsync(file)
            if path.exists():  # swap: the old folder is removed only once the new one is in place
                retired = path.with_name(f".{path.name}.{os.getpid()}.old")
                path.rename(retired)
                staging.rename(path)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                staging.rename(path)
            _fsync(path.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check a saved classifier's ``config.json`` without loading any network."""
    path = Path(path)
    file = path / "config.json"
    if not file.is_file():
        raise FewtuneError(f"{path}: not a fewtune classifier (no config.json); create one with `fewtune train DATA -o {path}`")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FewtuneError(f"{file}: unreadable ({exc}); the classifier is damaged, train it again") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise FewtuneError(f"{file}: not a fewtune classifier config; train it again with `fewtune train`")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FewtuneError(
            f"{path}: saved by fewtune {config.get('fewtune_version', '?')} in format {version}, newer than this "
            f"fewtune {__version__} reads (format {FORMAT_VERSION}); upgrade with `pip install -U fewtune`"
        )
    return config


def load(path: str | Path, backbone: Backbone | None = None) -> Classifier:
    """Load a saved classifier. Reads JSON and safetensors only: nothing in the folder can run code.

    Args:
        backbone: reuse an already-built backbone; it must have the same weights hash.
    """
    path = Path(path)
    config = read_config(path)
    saved = config["backbone"]
    if backbone is None:
        weights = None if saved["name"] in REGISTRY and saved["weights_source"] == REGISTRY[saved["name"]].package else saved["weights_source"]
        backbone = create_backbone(saved["name"], weights)
    if backbone.weights_sha256 != saved["weights_sha256"]:
        raise FewtuneError(
            f"{path}: trained with {saved['name']} weights {saved['weights_sha256'][:12]}… but this machine has "
            f"{backbone.weights_sha256[:12]}… ({backbone.weights_source}); install the same weights or retrain"
        )
    backbone.preprocessing = config["preprocessing"]  # what it was trained with, not today's default
    strategy = create_strategy(config["strategy"]["name"], **config["strategy"]["hyperparameters"])
    try:
        strategy.load_state_dict(load_file(path / "strategy.safetensors"))
        support = load_file(path / "support.safetensors")
    except (OSError, SafetensorError, KeyError) as exc:
        raise FewtuneError(f"{path}: damaged tensor file ({exc}); train the classifier again") from None
    return Classifier(
        backbone=backbone,
        strategy=strategy,
        classes=list(config["classes"]),
        support_features=support["features"],
        support_labels=support["labels"],
        fit_report=config["strategy"].get("fit", {}),
        training=config.get("training", {}),
    )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
