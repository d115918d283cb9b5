"""Transductive inference when the batch is balanced, and when it is not.

Transductive methods look at all of an episode's unlabelled queries at once. Benchmarks draw the
same number of queries from every class, and some methods (PT-MAP, TIM, fewtune's
``transductive=balanced``) build that in. A user's folder of unlabelled photos is rarely so even,
so each episode is scored twice: with its 15 queries a class ("balanced"), and with a lopsided
subset of them ("lopsided": each class keeps 1 to 15 of its queries, in proportions drawn from a
flat Dirichlet, seeded). Same episodes as ``bench/peers.py`` with the same seed; frozen features.

    python bench/transductive.py --data ../shared/data/caltech101 ../shared/data/omniglot \
        --episodes 300 --seed 1

``fewtune probe+transductive`` is what `fewtune predict --transductive` does on a `probe` model;
``prototype:transductive=true`` the same on a `prototype` one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from peers import easyfsl_accuracy
from threadpoolctl import threadpool_limits

import fewtune
from fewtune.evaluate.benchmark import episode_accuracy
from fewtune.evaluate.episodes import Episode, mean_ci95, sample_episodes
from fewtune.features.embedding import embed_files

METHODS = [
    "fewtune prototype",
    "fewtune probe",
    "fewtune prototype:transductive=true",
    "fewtune probe+transductive",
    "fewtune prototype:transductive=proportions",
    "fewtune prototype:transductive=balanced",
    "easyfsl BDCSPN",
    "easyfsl TIM",
    "easyfsl PTMAP",
]


def lopsided(episode: Episode, labels: list[int], rng: np.random.Generator) -> Episode:
    """The same episode with each class keeping a random share (1 to all) of its queries."""
    _, query_labels = episode.local_labels(labels)
    way = len(episode.classes)
    per_class = len(episode.query) // way
    shares = rng.dirichlet(np.ones(way))
    keep = np.maximum(1, np.round(per_class * shares / shares.max())).astype(int)
    query = [
        i for c in range(way) for i in [q for q, y in zip(episode.query, query_labels) if y == c][: keep[c]]
    ]
    return Episode(episode.classes, episode.support, query)


def model_level_accuracy(features: np.ndarray, labels: list[int], episode: Episode) -> float:
    """`fewtune predict --transductive` on a `probe` classifier: the batch decides the mode, and
    where refining does not pay the classifier's own (inductive) answer stands."""
    from fewtune.model import transduction
    from fewtune.strategies import Probe

    support_labels, query_labels = (np.array(x) for x in episode.local_labels(labels))
    support, batch, way = features[episode.support], features[episode.query], len(episode.classes)
    probe = Probe()
    probe.fit(support, support_labels, way)
    inductive = probe.logits(batch)
    decided = transduction.decide(support, support_labels, way, batch, inductive.argmax(1))
    logits = inductive if decided is None else decided[0]
    return float((logits.argmax(1) == query_labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/transductive.json"))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    args = parser.parse_args()
    methods = args.methods.split(",")
    # tiny per-episode problems: threads cost more than they give, in torch (easyfsl) and in
    # NumPy's BLAS (fewtune) alike
    torch.set_num_threads(1)
    threadpool_limits(1)
    backbone = fewtune.create_backbone()
    rows = []
    for folder in args.data:
        dataset = fewtune.load_dataset(folder)
        features = embed_files(backbone, dataset.paths, progress=True).features
        for shot in map(int, args.shots.split(",")):
            episodes = sample_episodes(dataset.labels, args.way, shot, args.queries, args.episodes, args.seed)
            rng = np.random.default_rng(args.seed)
            regimes = {"balanced": episodes, "lopsided": [lopsided(e, dataset.labels, rng) for e in episodes]}
            for regime, chosen in regimes.items():
                for method in methods:
                    tool, name = method.split(" ", 1)
                    started = time.perf_counter()
                    if method == "fewtune probe+transductive":
                        scores = [model_level_accuracy(features, dataset.labels, e) for e in chosen]
                    elif tool == "fewtune":
                        scores = [episode_accuracy(name, features, dataset.labels, e) for e in chosen]
                    else:
                        scores = [easyfsl_accuracy(name, features, dataset.labels, e) for e in chosen]
                    mean, ci = mean_ci95(scores)
                    row = {
                        "dataset": folder.name,
                        "way": args.way,
                        "shot": shot,
                        "queries": regime,
                        "method": method,
                        "episodes": len(chosen),
                        "mean": round(100 * mean, 2),
                        "ci95": round(100 * ci, 2),
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    columns = list(dict.fromkeys((r["dataset"], r["shot"], r["queries"]) for r in rows))
    lines = [
        "| method | " + " | ".join(f"{d} {k}-shot, {q}" for d, k, q in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        found = {(r["dataset"], r["shot"], r["queries"]): r for r in rows if r["method"] == method}
        cells = [f"{found[c]['mean']:.2f} ± {found[c]['ci95']:.2f}" if c in found else "–" for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
