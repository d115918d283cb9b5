"""`fewtune benchmark`: every strategy on the same N-way K-shot episodes of the user's own data.

Features are computed once and shared by all episodes and strategies; each strategy is fitted on
an episode's support set only (hyperparameters included) and scored on its queries. Episodes can
be written to / read from JSON (see :mod:`fewtune.evaluate.settings`) so other tools can run on
the same ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.data.dataset import Dataset, load_dataset
from fewtune.data.leakage import Fingerprints, duplicates, fingerprint
from fewtune.errors import FewtuneError, Interrupted
from fewtune.evaluate.episodes import Episode, mean_ci95
from fewtune.evaluate.settings import Setting, load_episodes, sample_settings
from fewtune.features.backbones import Backbone, create_backbone
from fewtune.features.embedding import embed_files
from fewtune.model.head import Head
from fewtune.progress import ProgressBar
from fewtune.strategies import Strategy, create_strategy


def build_strategy(spec: str) -> Strategy:
    """``probe`` -> Probe(); ``probe:l2=0.01`` -> Probe(l2=0.01). Values are read as JSON when they parse."""
    name, _, setting = spec.partition(":")
    hyperparameters: dict[str, Any] = {}
    if setting:
        key, _, value = setting.partition("=")
        try:
            hyperparameters[key] = json.loads(value)
        except json.JSONDecodeError:
            hyperparameters[key] = value
    return create_strategy(name, **hyperparameters)


@dataclass(frozen=True)
class Images:
    """What strategies that learn from the images themselves (``finetune``) need: the backbone
    the features came from and every dataset item's file."""

    backbone: Backbone
    paths: list[Path]


def fit_with_backbone(
    strategy: Strategy,
    features: np.ndarray,
    support: list[int],
    labels: np.ndarray,
    num_classes: int,
    images: Images | None,
) -> tuple[Head, Callable[[list[int]], np.ndarray], Backbone | None]:
    """Fit ``strategy`` on the items ``support`` (dataset indices) with episode ``labels``.

    Returns the head that scores, how to get the features of other items (re-embedded when the
    strategy fine-tuned the backbone), and the backbone a new image goes through (the tuned one
    after fine-tuning; ``images.backbone`` otherwise): what `compare` times predictions with."""
    support_features = features[support]
    embed: Callable[[list[int]], np.ndarray] = lambda items: features[items]  # noqa: E731
    backbone = images.backbone if images is not None else None
    if images is None and strategy.learns_from_images:
        raise FewtuneError(
            f"strategy {strategy.name!r} learns from the images: benchmark it from a dataset folder"
        )
    if images is not None:
        paths = [images.paths[i] for i in support]
        tuned = strategy.adapt(images.backbone, paths, labels, support_features, num_classes)
        if tuned is not images.backbone:  # tuned features belong to this fit alone: not worth caching
            support_features = embed_files(tuned, paths, cache=False).features
            embed = lambda items: embed_files(tuned, [images.paths[i] for i in items], cache=False).features  # noqa: E731
            backbone = tuned
    strategy.fit(support_features, labels, num_classes)
    return Head.around(strategy, support_features, labels, num_classes), embed, backbone


def episode_accuracy(
    spec: str, features: np.ndarray, labels: list[int], episode: Episode, images: Images | None = None
) -> float:
    """Fit a fresh strategy on the episode's support set and score it on its query set."""
    support, query = (np.asarray(y, dtype=np.int64) for y in episode.local_labels(labels))
    strategy = build_strategy(spec)
    head, embed, _ = fit_with_backbone(
        strategy, features, episode.support, support, len(episode.classes), images
    )
    return float((head.probabilities(embed(episode.query)).argmax(axis=1) == query).mean())


def run_setting(
    specs: list[str],
    features: np.ndarray,
    labels: list[int],
    setting: Setting,
    advance: Callable[[int], None] | None = None,
    images: Images | None = None,
) -> list[dict[str, Any]]:
    """One row per strategy: mean accuracy and 95% CI in percent, over exactly the same episodes.

    Args:
        advance: called after every episode (for a progress bar).
        images: needed by strategies that learn from images (see :class:`Images`).

    Raises:
        fewtune.errors.Interrupted: on Ctrl-C, carrying the rows so far; a partial row has
            ``"interrupted": true``.
    """
    from threadpoolctl import threadpool_limits

    rows: list[dict[str, Any]] = []
    for spec in specs:
        # episodes on embeddings are tiny problems: a second thread only adds sync cost
        with threadpool_limits(None if build_strategy(spec).learns_from_images else 1):
            started, scores = time.perf_counter(), []
            try:
                for episode in setting.episodes:
                    scores.append(episode_accuracy(spec, features, labels, episode, images))
                    if advance:
                        advance(1)
            except KeyboardInterrupt:
                if scores:
                    rows.append({**_row(spec, setting, scores, started), "interrupted": True})
                raise Interrupted("interrupted", rows) from None
            rows.append(_row(spec, setting, scores, started))
    return rows


def _row(spec: str, setting: Setting, scores: list[float], started: float) -> dict[str, Any]:
    mean, ci95 = mean_ci95(scores)
    return {
        "strategy": spec, "way": setting.way, "shot": setting.shot, "queries": setting.queries,
        "episodes": len(scores), "mean": round(100 * mean, 2), "ci95": round(100 * ci95, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip


def guard_leakage(settings: list[Setting], prints: Fingerprints, dedupe: bool) -> tuple[list[Setting], int]:
    """Count query images that duplicate a support image of their episode; with ``dedupe``, drop them."""
    found, cleaned = 0, []
    for s in settings:
        episodes = []
        for e in s.episodes:
            leaked = {j for _, j in duplicates(prints, e.support, e.query)}
            found += len(leaked)
            episodes.append(
                Episode(e.classes, e.support, [q for q in e.query if q not in leaked])
                if dedupe and leaked
                else e
            )
        cleaned.append(Setting(s.way, s.shot, s.queries, s.seed, episodes))
    return cleaned, found


def prepare_episodes(
    data: Path,
    specs: list[str],
    *,
    ways: list[int] | None = None,
    shots: list[int] | None = None,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    load_from: Path | None = None,
    dedupe: bool = False,
) -> tuple[Dataset, list[Setting], int]:
    """What `fewtune benchmark` runs on: the dataset at ``data`` and its episodes, read from
    ``load_from`` or sampled for every (way, shot) pair, with the number of query images that
    duplicate a support image of their episode (left out with ``dedupe``).

    Every spec is checked first, so a bad strategy name fails before minutes of embedding.
    """
    for spec in specs:
        build_strategy(spec)
    dataset = load_dataset(data)
    if load_from is not None:
        settings = load_episodes(load_from, dataset)
    else:
        settings = sample_settings(dataset, ways or [], shots or [], queries, episodes, seed)
    settings, leaked = guard_leakage(settings, fingerprint(dataset.paths), dedupe)
    return dataset, settings, leaked


def run_benchmark(
    dataset: Dataset,
    settings: list[Setting],
    specs: list[str],
    *,
    backbone: str = "efficientnet_lite0",
    weights: Path | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], bool]:
    """Embed the dataset once, then run every strategy on every setting's episodes (see
    :func:`run_setting`). Returns the rows and whether Ctrl-C stopped it (the rows then hold what
    was measured, the last possibly partial)."""
    encoder = create_backbone(backbone, weights)
    features = embed_files(encoder, dataset.paths, progress=progress)  # a bad image stops here, named
    images = Images(encoder, dataset.paths)
    rows: list[dict[str, Any]] = []
    total = sum(len(s.episodes) for s in settings) * len(specs)
    with ProgressBar("episodes", total, enabled=progress) as advance:
        try:
            for setting in settings:
                rows += run_setting(specs, features.features, dataset.labels, setting, advance, images)
        except Interrupted as stop:
            return rows + stop.rows, True
    return rows, False
