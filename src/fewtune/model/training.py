"""The training pipeline in one call: dataset -> backbone -> cached features -> strategy."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.data.dataset import Dataset, load_dataset
from fewtune.errors import FewtuneError
from fewtune.features.backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from fewtune.features.embedding import embed_files
from fewtune.model.classifier import Classifier
from fewtune.model.head import Embeddings, Head, check_class_names
from fewtune.model.openset import DEFAULT_UNKNOWN_LABEL, OpenSet
from fewtune.progress import Status
from fewtune.strategies import create_strategy
from fewtune.strategies.finetune import Finetune, decision, parse_unfreeze

if TYPE_CHECKING:
    from fewtune.strategies.finetune.lr_finder import LrFind

DEFAULT_STRATEGY = "auto"


def train(
    data: str | Path | Dataset,
    strategy: str = DEFAULT_STRATEGY,
    *,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    skip_bad: bool = False,
    cache: bool = True,
    progress: bool = False,
    open_set: bool = True,
    unknown_label: str = DEFAULT_UNKNOWN_LABEL,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    notify: Callable[[str], None] | None = None,
    **hyperparameters: Any,
) -> Classifier:
    """Train a classifier on a folder of ``<class>/<image>`` files or a ``path,label`` CSV.

    Args:
        data: the labelled images (a path, or a :class:`Dataset` already loaded).
        strategy: ``"auto"`` (the one best on held-out training examples; it fine-tunes the body
            only where a cross-fitted tune shows that it pays), ``"prototype"`` (no
            training, works from one example), ``"probe"`` (linear head on frozen features) or
            ``"finetune"`` (new head, then the top of the body if it pays); see :mod:`fewtune.strategies`.
        backbone: a registered backbone name, a timm architecture (with ``weights``), or a built
            :class:`Backbone` to reuse.
        weights: local weights file for the backbone.
        skip_bad: skip unreadable images (listed in ``classifier.training``) instead of failing.
        cache: read and write embeddings in the on-disk feature cache.
        progress: show a progress bar while embedding.
        open_set: answer ``unknown_label`` for inputs like none of the classes (threshold
            calibrated from the support set; see :mod:`fewtune.model.openset`).
        unknown_label: the label of rejected inputs; no class may be named so.
        checkpoint: folder where ``finetune`` saves a checkpoint after every epoch.
        resume: continue fine-tuning from ``checkpoint``.
        notify: called with a one-line message before slow work (fine-tuning, with its expected time).
        **hyperparameters: passed to the strategy, e.g. ``l2=0.01`` for ``probe``.
    """
    started = time.perf_counter()
    learner = create_strategy(strategy, **hyperparameters)  # bad settings fail before any heavy work
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    check_class_names(dataset.classes, unknown_label)
    if not isinstance(backbone, Backbone):
        with Status(f"loading the {backbone} backbone", enabled=progress):
            backbone = create_backbone(backbone, weights)
    embedded = embed_files(backbone, dataset.paths, cache=cache, skip_bad=skip_bad, progress=progress)
    labels = np.array([dataset.labels[i] for i in embedded.kept], dtype=np.int64)
    empty = [c for i, c in enumerate(dataset.classes) if not (labels == i).any()]
    if empty:
        raise FewtuneError(
            f"{dataset.source}: class {empty[0]!r} has no readable images left after skipping bad files"
        )
    kept_paths = [dataset.paths[i] for i in embedded.kept]
    features = embedded.features
    pretrained, pretrained_support = None, None
    tuned = learner.adapt(
        backbone, kept_paths, labels, features, len(dataset.classes),
        progress=progress, checkpoint=Path(checkpoint) if checkpoint else None, resume=resume, notify=notify,
    )  # fmt: skip
    if tuned is not backbone:
        pretrained, pretrained_support = backbone, features  # novelty stays on pretrained embeddings
        backbone, features = tuned, embed_files(tuned, kept_paths, cache=cache, progress=progress).features
    summary = {
        "source": str(dataset.source),
        "images": len(kept_paths),
        "per_class": dict(
            zip(dataset.classes, np.bincount(labels, minlength=len(dataset.classes)).tolist(), strict=True)
        ),
        "skipped_non_images": dataset.skipped,
        "bad_images": [{"path": str(p), "error": reason} for p, reason in embedded.bad],
        "duplicates_across_classes": _duplicates_across_classes(
            kept_paths, embedded.hashes, labels, dataset.classes
        ),
        "embeddings_computed": embedded.computed,
        "embeddings_from_cache": len(kept_paths) - embedded.computed,
        "seconds": round(time.perf_counter() - started, 3),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    head = Head(
        strategy=learner,
        classes=list(dataset.classes),
        support=Embeddings(features, features if pretrained_support is None else pretrained_support),
        labels=labels,
        open_set=OpenSet(enabled=open_set, unknown_label=unknown_label),
    )
    classifier = Classifier(backbone=backbone, head=head, pretrained=pretrained, training=summary)
    with Status(f"fitting {strategy}: the head, calibration and the unknown threshold", enabled=progress):
        head.fit()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return classifier


def _duplicates_across_classes(
    paths: list[Path], hashes: list[str], labels: np.ndarray, classes: list[str]
) -> list[dict]:
    """Files with identical bytes filed under different classes: almost always a labelling mistake."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(hashes):
        groups[digest].append(i)
    found = []
    for members in groups.values():
        if len({int(labels[i]) for i in members}) > 1:
            found.append(
                {
                    "classes": sorted({classes[int(labels[i])] for i in members}),
                    "paths": [str(paths[i]) for i in members],
                }
            )
    return found


def find_lr(
    data: str | Path | Dataset,
    *,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    **config: Any,
) -> LrFind:
    """Learning-rate range test for ``finetune`` on this data (see
    :func:`fewtune.strategies.finetune.lr_finder.lr_find`); opens the stages ``unfreeze`` names
    (``auto``: the ones fine-tuning would open)."""
    import torch

    from fewtune.strategies.finetune.lr_finder import lr_find
    from fewtune.strategies.finetune.views import load_pictures

    strategy = create_strategy("finetune", **config)  # a bad setting is a FewtuneError naming its flag
    assert isinstance(strategy, Finetune)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    if not isinstance(backbone, Backbone):
        backbone = create_backbone(backbone, weights)
    setting = parse_unfreeze(strategy.config.unfreeze)
    if isinstance(setting, int):
        top: int | None = setting
    else:  # auto: the stages fine-tuning would open; all: None
        top = {"auto": decision.AUTO_TOP, "none": 0}.get(setting)
    labels = torch.tensor(dataset.labels, dtype=torch.long)
    return lr_find(backbone, load_pictures(dataset.paths), labels, len(dataset.classes), strategy.config, top)
