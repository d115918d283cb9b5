"""The bundled demo: teach fewtune six kinds of object from one photo each, then a few each."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fewtune.data.dataset import Dataset, load_dataset
from fewtune.features.backbones import Backbone, create_backbone
from fewtune.model.classifier import Classifier
from fewtune.model.training import train

SHOTS = (1, 3)  #: examples per class the demo trains on
STRATEGIES = ("prototype", "probe")


def demo_photos() -> Path:
    """The bundled Caltech-101 photos (see ``demo_photos/ATTRIBUTION.md``)."""
    return Path(str(resources.files("fewtune") / "demo_photos"))


@dataclass
class DemoResult:
    """One (strategy, shots) run: accuracy on the held-out photos and what it got wrong."""

    strategy: str
    shots: int
    accuracy: float
    tested: int
    seconds: float
    mistakes: list[tuple[Path, str, str, float]]  # path, truth, predicted, score
    classifier: Classifier


def split(dataset: Dataset, shots: int, holdout_from: int) -> tuple[Dataset, list[tuple[Path, int]]]:
    """First ``shots`` photos of each class to train on; photos from index ``holdout_from`` on to test.

    The test photos are the same for every ``shots``, so the rows of the demo are comparable.
    """
    seen: dict[int, int] = {}
    train_items: list[tuple[Path, int]] = []
    test_items: list[tuple[Path, int]] = []
    for path, label in zip(dataset.paths, dataset.labels, strict=True):
        rank = seen[label] = seen.get(label, -1) + 1
        if rank < shots:
            train_items.append((path, label))
        elif rank >= holdout_from:
            test_items.append((path, label))
    subset = Dataset(
        paths=[p for p, _ in train_items],
        labels=[label for _, label in train_items],
        classes=dataset.classes,
        source=dataset.source,
    )
    return subset, test_items


def run_demo(backbone: Backbone | None = None, progress: bool = True) -> list[DemoResult]:
    """Train every strategy at every entry of :data:`SHOTS` and score it on the held-out photos."""
    backbone = backbone or create_backbone()
    dataset = load_dataset(demo_photos())
    results = []
    for shots in SHOTS:
        subset, test_items = split(dataset, shots, holdout_from=max(SHOTS))
        for strategy in STRATEGIES:
            started = time.perf_counter()
            classifier = train(subset, strategy, backbone=backbone, progress=progress)
            # every test photo shows a known class: score the closed-set choice
            predictions = classifier.predict([p for p, _ in test_items], progress=progress, open_set=False)
            seconds = time.perf_counter() - started
            truth = [dataset.classes[label] for _, label in test_items]
            mistakes = [
                (Path(p.path), t, p.label, p.score)
                for p, t in zip(predictions, truth, strict=True)
                if p.label != t
            ]
            accuracy = 1 - len(mistakes) / len(test_items)
            results.append(
                DemoResult(strategy, shots, accuracy, len(test_items), seconds, mistakes, classifier)
            )
    return results


def run_open_set_demo(
    backbone: Backbone, held_out_class: str = "watch", shots: int = max(SHOTS)
) -> tuple[list[str], int, int]:
    """Train on every class but one, then show it photos of that one: how many come back unknown?

    Returns the classes it knows, how many held-out photos it rejected, and how many it saw.
    """
    dataset = load_dataset(demo_photos())
    subset, _ = split(dataset, shots, holdout_from=shots)
    keep = [i for i, label in enumerate(subset.labels) if dataset.classes[label] != held_out_class]
    known = [c for c in dataset.classes if c != held_out_class]
    remap = {dataset.classes.index(c): i for i, c in enumerate(known)}
    training = Dataset(
        paths=[subset.paths[i] for i in keep],
        labels=[remap[subset.labels[i]] for i in keep],
        classes=known,
        source=dataset.source,
    )
    classifier = train(training, "prototype", backbone=backbone)
    photos = sorted((demo_photos() / held_out_class).iterdir())
    rejected = sum(p.is_unknown for p in classifier.predict(photos))
    return known, rejected, len(photos)
