"""Open-set rejection and calibration, measured: train on some classes, show others as unknown.

Each episode samples ``known + unknown`` classes; the classifier is fitted on ``shot`` support
images of the known classes only (threshold and temperature calibrated from those alone), then
sees ``queries`` images of every class. Reported per strategy and shot, mean over episodes:
- AUROC of novelty for unknown-vs-known queries (threshold-free);
- accuracy on known queries at the threshold that rejects 95% of unknowns (an oracle threshold:
  it shows what the novelty score allows);
- at the threshold calibrated from the support set: share of known queries accepted, share of
  unknown queries rejected, and open-set accuracy (known: right class, unknown: rejected);
- expected calibration error on known queries (closed set), before and after temperature scaling.

    python bench/openset.py --data ../shared/data/caltech101
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import fewtune
from fewtune.evaluate.episodes import mean_ci95, sample_episodes
from fewtune.features.embedding import embed_files
from fewtune.model.calibration import expected_calibration_error
from fewtune.model.head import Embeddings, Head
from fewtune.numeric import softmax


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(positive score > negative score), ties counted half (Mann-Whitney U)."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def run_episode(backbone, features, labels, episode, known: int, strategy: str) -> dict[str, float]:
    query_local = {c: i for i, c in enumerate(episode.classes)}
    support = [i for i in episode.support if query_local[labels[i]] < known]
    clf = Head(
        strategy=fewtune.create_strategy(strategy),
        classes=[str(c) for c in episode.classes[:known]],
        support=Embeddings.frozen(features[support]),
        labels=np.array([query_local[labels[i]] for i in support]),
    )
    clf.fit()
    q_local = np.array([query_local[labels[i]] for i in episode.query])
    is_known = q_local < known
    q = features[episode.query]
    novelty = clf.novelty(q)
    probabilities = clf.probabilities(q)
    raw = softmax(clf.strategy.logits(q))
    predicted = probabilities.argmax(1)
    correct = is_known & (predicted == q_local)
    oracle = np.quantile(novelty[~is_known], 0.05)  # rejects 95% of unknowns
    threshold = clf.open_set.threshold
    known_labels = q_local[is_known]
    return {
        "auroc": auroc(novelty[is_known], novelty[~is_known]),
        "known_acc_at_95_unknown_recall": float((correct & (novelty <= oracle)).sum() / is_known.sum()),
        "closed_set_known_acc": float(correct.sum() / is_known.sum()),
        "calibrated_known_accepted": float((novelty[is_known] <= threshold).mean()),
        "calibrated_unknown_rejected": float((novelty[~is_known] > threshold).mean()),
        "calibrated_open_set_acc": float(
            ((correct & (novelty <= threshold)) | (~is_known & (novelty > threshold))).mean()
        ),
        "ece_before": expected_calibration_error(raw[is_known], known_labels),
        "ece_after": expected_calibration_error(probabilities[is_known], known_labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--known", type=int, default=5)
    parser.add_argument("--unknown", type=int, default=5)
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--strategies", default="prototype,probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/openset.json"))
    args = parser.parse_args()

    backbone = fewtune.create_backbone()
    dataset = fewtune.load_dataset(args.data)
    features = embed_files(backbone, dataset.paths, progress=True).features
    rows = []
    for shot in [int(s) for s in args.shots.split(",")]:
        episodes = sample_episodes(
            dataset.labels, args.known + args.unknown, shot, args.queries, args.episodes, args.seed
        )
        for strategy in args.strategies.split(","):
            started = time.perf_counter()
            results = [
                run_episode(backbone, features, dataset.labels, e, args.known, strategy) for e in episodes
            ]
            row = {
                "dataset": args.data.name,
                "strategy": strategy,
                "known": args.known,
                "unknown": args.unknown,
                "shot": shot,
                "queries": args.queries,
                "episodes": len(episodes),
            }
            for key in results[0]:
                mean, ci = mean_ci95([100 * r[key] for r in results])
                row[key], row[f"{key}_ci95"] = round(mean, 2), round(ci, 2)
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    keys = [
        "auroc",
        "known_acc_at_95_unknown_recall",
        "closed_set_known_acc",
        "calibrated_known_accepted",
        "calibrated_unknown_rejected",
        "calibrated_open_set_acc",
        "ece_before",
        "ece_after",
    ]
    print("\n| strategy | shot | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for row in rows:
        print(
            f"| {row['strategy']} | {row['shot']} | "
            + " | ".join(f"{row[k]:.1f} ± {row[k + '_ci95']:.1f}" for k in keys)
            + " |"
        )


if __name__ == "__main__":
    main()
