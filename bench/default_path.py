"""The number a user lives with: plain `train` + `predict` (auto, open set on) against every strategy.

Each episode draws ``way`` known classes (``shot`` support images and ``queries`` test images
each) and ``way`` other classes whose ``queries`` images the classifier was never taught. Every
strategy is trained through :func:`fewtune.train` on the support images, exactly as
`fewtune train DATA -o M` does (``auto`` with no options is the default path), and predicts through
:meth:`Classifier.predict`, as `fewtune predict M photos/` does. Reported per strategy, mean and
95% CI over episodes:

- closed-set accuracy on the known classes' test images (``--closed-set``);
- open-set accuracy on them: the default answer, where ``unknown`` counts as wrong;
- known-class test images answered ``unknown``, and never-taught images answered ``unknown``;
- AUROC of novelty, never-taught against known (threshold-free);
- expected calibration error on the known images (closed set) with T = 1 and with the fitted
  temperature: the mean of each episode's (``ece_t1``, ``ece``: 15 bins over 50 images carry a
  few points of upward small-sample bias) and over every episode's images pooled
  (``pooled_ece_t1``, ``pooled_ece``: the usual test-set ECE);
- train seconds per episode, and for ``auto`` how often it fine-tuned.

    python bench/default_path.py --data ../shared/data/omniglot --settings 5x1,5x5,20x1 --episodes 100
    python bench/default_path.py --data ../shared/data/omniglot --settings 5x5 --strategies auto --tasks 6,24
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import fewtune
from fewtune.data.dataset import Dataset
from fewtune.evaluate.episodes import mean_ci95, sample_episodes
from fewtune.model.calibration import expected_calibration_error

METRICS = (
    "closed_acc",
    "open_acc",
    "known_rejected",
    "unknown_rejected",
    "auroc",
    "ece_t1",
    "ece",
    "seconds",
)


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(positive score > negative score), ties counted half (Mann-Whitney U)."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def familiarity_band(
    data: Path, shot: int, episodes: int, seed: int, low: float, high: float
) -> tuple[Dataset, fewtune.Backbone, list[tuple[int, object, float, float]]]:
    """The dataset, the backbone and the 5-way episodes of :func:`main` (seeded alike) whose
    support images' ImageNet familiarity is in [low, high): ``(index, episode, familiarity,
    between-class similarity of the support)``."""
    from fewtune.features.embedding import embed_files
    from fewtune.geometry import between_class_similarity
    from fewtune.strategies.finetune.decision import imagenet_familiarity

    backbone = fewtune.create_backbone()
    dataset = fewtune.load_dataset(data)
    features = embed_files(backbone, dataset.paths).features
    band = []
    for n, episode in enumerate(sample_episodes(dataset.labels, 10, shot, 10, episodes, seed)):
        known = [i for i in episode.support if dataset.labels[i] in episode.classes[:5]]
        familiarity = imagenet_familiarity(backbone, features[known])
        if familiarity is not None and low <= familiarity < high:
            labels = np.array([episode.classes.index(dataset.labels[i]) for i in known])
            band.append((n, episode, familiarity, between_class_similarity(features[known], labels)))
    return dataset, backbone, band


def run_episode(
    dataset: Dataset, episode, way: int, strategy: str, backbone
) -> tuple[dict[str, float], tuple]:
    names = [dataset.classes[c] for c in episode.classes]
    known = [i for i in episode.support if dataset.labels[i] in episode.classes[:way]]
    support = Dataset(
        paths=[dataset.paths[i] for i in known],
        labels=[episode.classes.index(dataset.labels[i]) for i in known],
        classes=names[:way],
        source=dataset.source,
    )
    started = time.perf_counter()
    classifier = fewtune.train(support, strategy, backbone=backbone)  # one backbone for all: loaded once
    seconds = time.perf_counter() - started
    queries = [dataset.paths[i] for i in episode.query]
    truth = np.array([episode.classes.index(dataset.labels[i]) for i in episode.query])
    is_known = truth < way
    predictions = classifier.predict(queries)
    answers = np.array([names[:way].index(p.label) if not p.is_unknown else -1 for p in predictions])
    nearest = np.array([names[:way].index(p.nearest) for p in predictions])
    novelty = np.array([p.novelty for p in predictions])
    # float32, the precision the head computed them in
    probabilities = np.array([list(p.probabilities.values()) for p in predictions], dtype=np.float32)[
        is_known
    ]
    batch, _ = classifier.embed([q for q, k in zip(queries, is_known) if k])
    raw = classifier.head.probabilities(batch.features, temperature=1.0)
    known_truth = truth[is_known]
    row = {
        "closed_acc": float((nearest[is_known] == truth[is_known]).mean()),
        "open_acc": float((answers[is_known] == truth[is_known]).mean()),
        "known_rejected": float((answers[is_known] == -1).mean()),
        "unknown_rejected": float((answers[~is_known] == -1).mean()),
        "auroc": auroc(novelty[is_known], novelty[~is_known]),
        "ece_t1": expected_calibration_error(raw, known_truth),
        "ece": expected_calibration_error(probabilities, known_truth),
        "seconds": seconds,
    }
    report = classifier.fit_report
    row["tuned"] = float(classifier.pretrained is not None)
    row["temperature_on_bound"] = float(bool(classifier.calibration.get("on_search_bound")))
    if strategy == "auto":
        row["chose_" + str(report.get("chosen"))] = 1.0
    return row, (raw, probabilities, known_truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--settings", default="5x1,5x5,20x1", help="WAYxSHOT list")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--strategies", default="auto,prototype,probe,finetune")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/default_path.json"))
    parser.add_argument(
        "--tasks", help="comma-separated episode numbers: print each one's row and write nothing (reruns)"
    )
    args = parser.parse_args()
    if args.tasks:
        return rerun_tasks(args, [int(n) for n in args.tasks.split(",")])

    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    backbone = fewtune.create_backbone()
    for data, dataset, way, shot, episodes, strategy in draws(args):
        started = time.perf_counter()
        results, pooled = zip(
            *(run_episode(dataset, e, way, strategy, backbone) for e in episodes), strict=True
        )
        row = {
            "dataset": data.name,
            "way": way,
            "shot": shot,
            "queries": args.queries,
            "strategy": strategy,
            "episodes": len(results),
            "seed": args.seed,
        }
        for key in METRICS:
            mean, ci = mean_ci95([r[key] * (1 if key == "seconds" else 100) for r in results])
            row[key], row[key + "_ci95"] = round(mean, 2), round(ci, 2)
        for key in sorted({k for r in results for k in r} - set(METRICS)):
            row[key] = round(100 * float(np.mean([r.get(key, 0.0) for r in results])), 1)
        truth = np.concatenate([t for _, _, t in pooled])
        for key, column in (("pooled_ece_t1", 0), ("pooled_ece", 1)):
            probabilities = np.concatenate([p[column] for p in pooled])
            row[key] = round(100 * expected_calibration_error(probabilities, truth), 2)
        row["wall_seconds"] = round(time.perf_counter() - started, 1)
        rows = [
            r
            for r in rows
            if (r["dataset"], r["way"], r["shot"], r["strategy"]) != (data.name, way, shot, strategy)
        ]
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)


def draws(args: argparse.Namespace):
    """Each (data, dataset, way, shot, episodes, strategy) that the arguments ask for."""
    for data in args.data:
        dataset = fewtune.load_dataset(data)
        for setting in args.settings.split(","):
            way, shot = (int(x) for x in setting.split("x"))
            episodes = sample_episodes(dataset.labels, 2 * way, shot, args.queries, args.episodes, args.seed)
            for strategy in args.strategies.split(","):
                yield data, dataset, way, shot, episodes, strategy


def rerun_tasks(args: argparse.Namespace, tasks: list[int]) -> None:
    """Chosen episodes of the same seeded draw, one JSON line per task and strategy: to measure
    what a change does to the few tasks it touches (reruns are deterministic)."""
    backbone = fewtune.create_backbone()
    for data, dataset, way, _, episodes, strategy in draws(args):
        for n in tasks:
            row, _ = run_episode(dataset, episodes[n], way, strategy, backbone)
            print(json.dumps({"dataset": data.name, "way": way, "strategy": strategy, "episode": n, **row}))


def print_table(rows: list[dict]) -> None:
    """Markdown: the default path (auto, open set on) beside every strategy's closed-set accuracy."""
    print(
        "\n| data | setting | strategy | closed-set acc. | **default answer (open set)** | known → unknown "
        "| never-taught → unknown | AUROC | ECE T=1 → fitted | episodes |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['way']}w{r['shot']}s | {r['strategy']} | {r['closed_acc']:.1f} ± "
            f"{r['closed_acc_ci95']:.1f} "
            f"| {r['open_acc']:.1f} ± {r['open_acc_ci95']:.1f} | {r['known_rejected']:.1f} | "
            f"{r['unknown_rejected']:.1f} "
            f"| {r['auroc']:.1f} | {r['ece_t1']:.1f} → {r['ece']:.1f} | {r['episodes']} |"
        )


if __name__ == "__main__":
    main()
