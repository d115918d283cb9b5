"""The episodes of a benchmark, by setting: sampled from a dataset, saved to and read from JSON.

An episodes file names classes and image paths (relative to the data folder when inside it), so
another tool, or another machine, can run on exactly the same tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fewtune.data.dataset import Dataset
from fewtune.errors import FewtuneError
from fewtune.evaluate.episodes import Episode, sample_episodes
from fewtune.storage import atomic

EPISODES_FORMAT = "fewtune-episodes"


@dataclass(frozen=True)
class Setting:
    """The episodes of one N-way K-shot setting."""

    way: int
    shot: int
    queries: int
    seed: int
    episodes: list[Episode]


def sample_settings(
    dataset: Dataset, ways: list[int], shots: list[int], queries: int, episodes: int, seed: int
) -> list[Setting]:
    """Seeded episodes for every (way, shot) pair."""
    settings = []
    for way in ways:
        for shot in shots:
            try:
                sampled = sample_episodes(dataset.labels, way, shot, queries, episodes, seed)
            except ValueError as exc:
                raise FewtuneError(f"{dataset.source}: {exc}") from None
            settings.append(Setting(way, shot, queries, seed, sampled))
    return settings


def save_episodes(path: Path, dataset: Dataset, settings: list[Setting]) -> None:
    """Write episodes as class names and file paths (relative to the dataset folder when inside it)."""

    def name(i: int) -> str:
        p = dataset.paths[i]
        return str(p.relative_to(dataset.source)) if p.is_relative_to(dataset.source) else str(p)

    data = {
        "format": EPISODES_FORMAT,
        "version": 1,
        "data": str(dataset.source),
        "settings": [
            {
                "way": s.way,
                "shot": s.shot,
                "queries": s.queries,
                "seed": s.seed,
                "episodes": [
                    {
                        "classes": [dataset.classes[c] for c in e.classes],
                        "support": [name(i) for i in e.support],
                        "query": [name(i) for i in e.query],
                    }
                    for e in s.episodes
                ],
            }
            for s in settings
        ],
    }
    atomic.write_text(path, json.dumps(data, indent=1) + "\n")


def load_episodes(path: Path, dataset: Dataset) -> list[Setting]:
    """Read episodes written by :func:`save_episodes` (or by another tool in the same format)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != EPISODES_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {EPISODES_FORMAT!r}")
    except (OSError, ValueError, AttributeError) as exc:
        raise FewtuneError(
            f"{path}: not a fewtune episodes file ({exc}); write one with `fewtune benchmark --save-episodes`"
        ) from None
    index = {}
    for i, p in enumerate(dataset.paths):
        index[str(p)] = i
        if p.is_relative_to(dataset.source):
            index[str(p.relative_to(dataset.source))] = i
    classes = {c: i for i, c in enumerate(dataset.classes)}

    def lookup(item: str) -> int:
        if item not in index:
            raise FewtuneError(
                f"{path}: episode image {item!r} is not in {dataset.source}; use the same data folder"
            )
        return index[item]

    settings = []
    for s in data["settings"]:
        episodes = []
        for e in s["episodes"]:
            unknown = [c for c in e["classes"] if c not in classes]
            if unknown:
                raise FewtuneError(
                    f"{path}: episode class {unknown[0]!r} is not in {dataset.source}; "
                    "use the same data folder"
                )
            episodes.append(
                Episode(
                    [classes[c] for c in e["classes"]],
                    [lookup(p) for p in e["support"]],
                    [lookup(p) for p in e["query"]],
                )
            )
        settings.append(
            Setting(int(s["way"]), int(s["shot"]), int(s["queries"]), int(s.get("seed", 0)), episodes)
        )
    return settings
