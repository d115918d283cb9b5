"""At one example per class, which temperature does each task want, and does the rule give it?

Development episodes (seed 0; `way` classes, 1 support and 10 test images each, embeddings from
the feature cache): for `probe` and `prototype`, the temperature that minimises the pooled ECE of
the test images, by quintile of the support's mean between-class cosine similarity (the rule's
input), per dataset and way; then the pooled ECE with one temperature (0.5) for every task and
with the rule (:meth:`Strategy.one_shot_temperature`).

    python bench/one_shot_temperature.py ../shared/data/caltech101 ../shared/data/omniglot \
        /tmp/caltech101-32px --episodes 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import fewtune
from fewtune.evaluate.episodes import sample_episodes
from fewtune.features.embedding import embed_files
from fewtune.geometry import between_class_similarity
from fewtune.model.calibration import expected_calibration_error
from fewtune.numeric import softmax
from fewtune.strategies import create_strategy

NAMES = ("probe", "prototype")
GRID = [0.1 * 1.07**i for i in range(40)]


def tasks(data: list[Path], ways: list[int], episodes: int) -> list[dict]:
    backbone, out = fewtune.create_backbone(), []
    for folder in data:
        dataset = fewtune.load_dataset(folder)
        embedded = embed_files(backbone, dataset.paths, cache=True)
        assert len(embedded.kept) == len(dataset.paths), "every image must embed"
        features, labels = embedded.features, np.array(dataset.labels)
        for way in ways:
            for episode in sample_episodes(dataset.labels, way, 1, 10, episodes, 0):
                support, query = np.array(episode.support), np.array(episode.query)
                y = np.array([episode.classes.index(int(labels[i])) for i in support])
                task = {
                    "data": folder.name,
                    "way": way,
                    "s": between_class_similarity(features[support], y),
                    "truth": np.array([episode.classes.index(int(labels[i])) for i in query]),
                }
                for name in NAMES:
                    strategy = create_strategy(name)
                    strategy.fit(features[support], y, way)
                    task[name] = strategy.logits(features[query])
                    task[name + "_rule"] = strategy.one_shot_temperature(features[support], y)
                out.append(task)
    return out


def pooled_ece(group: list[dict], name: str, temperature) -> float:
    probabilities = np.concatenate([softmax(t[name] / temperature(t)) for t in group])
    return 100 * expected_calibration_error(probabilities, np.concatenate([t["truth"] for t in group]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="+")
    parser.add_argument("--ways", default="5,20")
    parser.add_argument("--episodes", type=int, default=200)
    args = parser.parse_args()
    found = tasks(args.data, [int(w) for w in args.ways.split(",")], args.episodes)
    # float32, as before: an edge that falls on a task's own similarity bins it as it did
    similarity = np.array([t["s"] for t in found], dtype=np.float32)
    edges = [-1.0, *np.quantile(similarity, [0.2, 0.4, 0.6, 0.8]).tolist(), 2.0]
    print("similarity quintile edges:", ", ".join(f"{e:.3f}" for e in edges[1:-1]))
    for name in NAMES:
        print(
            f"\n{name}: wanted temperature by similarity quintile (tasks: T); pooled ECE at 0.5 -> the rule"
        )
        for data in sorted({t["data"] for t in found}):
            for way in sorted({t["way"] for t in found}):
                group = [t for t in found if t["data"] == data and t["way"] == way]
                cells = []
                for low, high in zip(edges[:-1], edges[1:], strict=True):
                    part = [t for t in group if low <= t["s"] < high]
                    if len(part) < 15:
                        cells.append("-")
                        continue
                    best = min(GRID, key=lambda g: pooled_ece(part, name, lambda t: g))
                    cells.append(f"{len(part)}: {best:.2f}")
                before = pooled_ece(group, name, lambda t: 0.5)
                after = pooled_ece(group, name, lambda t: t[name + "_rule"])
                print(f"  {data} {way}-way | {' | '.join(cells)} | ECE {before:.1f} -> {after:.1f}")


if __name__ == "__main__":
    main()
