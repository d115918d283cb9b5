"""Where the unknown threshold lands, rule by rule, on the episodes of ``bench/default_path.py``.

Novelty is measured on pretrained embeddings for every strategy, so a threshold rule can be
scored without training anything: each episode's support set gives its held-out novelty scores
(:func:`fewtune.model.openset.support_novelty`), each rule turns them into a threshold, and the
episode's test images tell how many known-class images it rejects (the default path loses those
answers) and how many never-taught ones it catches. Rules with 2+ examples a class:

- ``normal``: fewtune's (:func:`fewtune.model.openset.known_quantile`), 98% of known inputs;
- ``lognormal``: the same with the normal fit on log-novelty, whose right tail is longer;
- ``normal-99``: fewtune's rule aiming at 99%.

    python bench/threshold_rules.py ../shared/data/omniglot ../shared/data/caltech101 --seed 0
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np

import fewtune
from fewtune.evaluate.episodes import mean_ci95, sample_episodes
from fewtune.features.embedding import embed_files
from fewtune.geometry import class_means
from fewtune.model.openset import (
    TARGET_KNOWN_RECALL,
    conformal_quantile,
    known_quantile,
    novelty,
    support_novelty,
)


def lognormal(scores: np.ndarray, target: float = TARGET_KNOWN_RECALL) -> float:
    logs = np.log(np.maximum(scores, 1e-6))
    fit = math.exp(float(logs.mean()) + NormalDist().inv_cdf(target) * float(logs.std(ddof=1)))
    return max(conformal_quantile(scores, target), fit)


RULES = {
    "normal": lambda s: known_quantile(s, TARGET_KNOWN_RECALL),
    "lognormal": lognormal,
    "normal-99": lambda s: known_quantile(s, 0.99),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="+")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="0: development episodes; 1: default_path's")
    args = parser.parse_args()
    if args.shot < 2:
        parser.error("--shot must be 2 or more: with one example a class nothing is held out")
    backbone = fewtune.create_backbone()
    print(f"{args.way}-way {args.shot}-shot, seed {args.seed}, {args.episodes} episodes\n")
    print("| data | rule | known → unknown | never-taught → unknown |")
    print("|---|---|---:|---:|")
    for data in args.data:
        dataset = fewtune.load_dataset(data)
        features = embed_files(backbone, dataset.paths).features
        rejected: dict[str, tuple[list[float], list[float]]] = {rule: ([], []) for rule in RULES}
        episodes = sample_episodes(
            dataset.labels, 2 * args.way, args.shot, args.queries, args.episodes, args.seed
        )
        for episode in episodes:
            known = [i for i in episode.support if dataset.labels[i] in episode.classes[: args.way]]
            labels = np.array([episode.classes.index(dataset.labels[i]) for i in known])
            held_out, _ = support_novelty(features[known], labels, args.way)
            assert held_out is not None
            prototypes = class_means(features[known], labels, args.way)
            truth = np.array([episode.classes.index(dataset.labels[i]) for i in episode.query])
            scores = novelty(features[list(episode.query)], prototypes)
            for rule, threshold_of in RULES.items():
                threshold = threshold_of(held_out)
                rejected[rule][0].append(float((scores[truth < args.way] > threshold).mean()))
                rejected[rule][1].append(float((scores[truth >= args.way] > threshold).mean()))
        for rule, (known_rates, unknown_rates) in rejected.items():
            (k, k_ci), (u, u_ci) = (
                mean_ci95([100 * r for r in rates]) for rates in (known_rates, unknown_rates)
            )
            print(f"| {data.name} | {rule} | {k:.2f} ± {k_ci:.2f} | {u:.1f} ± {u_ci:.1f} |")


if __name__ == "__main__":
    main()
