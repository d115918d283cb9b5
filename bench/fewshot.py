"""Few-shot accuracy of each strategy on frozen backbone features, over the same random episodes.

Every dataset is embedded once (through the feature cache, so a rerun does no backbone work);
then, for each N-way K-shot setting, all strategies are scored on exactly the same episodes and
reported as mean accuracy with a 95% confidence interval, in percent.

    python bench/fewshot.py --data ../shared/data/caltech101 ../shared/data/omniglot
    python bench/fewshot.py --data ../shared/data/omniglot --way 20 --shots 1 \
        --out bench/results/omniglot-20way.json
    python bench/fewshot.py --data DATA --shots 1 --strategies prototype,probe,probe:l2=0.001,probe:l2=0.1

A strategy spec is a registered name, optionally with one hyperparameter (``probe:l2=0.01``), so
one run can compare settings on the same episodes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import fewtune
from fewtune.evaluate.benchmark import Images, build_strategy, run_setting
from fewtune.evaluate.episodes import sample_episodes
from fewtune.evaluate.settings import Setting
from fewtune.features.embedding import embed_files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", nargs="+", required=True, type=Path, help="dataset folders (one subfolder per class)"
    )
    parser.add_argument(
        "--way", default="5", help="classes per episode, comma-separated for several (e.g. 5,20)"
    )
    parser.add_argument("--shots", default="1,5", help="support examples per class, comma-separated")
    parser.add_argument("--queries", type=int, default=15, help="query examples per class")
    parser.add_argument("--episodes", type=int, default=600, help="episodes per setting")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the episodes (the same for every strategy)"
    )
    parser.add_argument(
        "--strategies",
        default="prototype,probe",
        help="comma-separated: NAME or NAME:KEY=VALUE (e.g. probe:l2=0.01)",
    )
    parser.add_argument(
        "--max-episodes",
        action="append",
        default=[],
        metavar="SPEC=N",
        help="score strategy SPEC on only the first N of the episodes (e.g. probe=200), for slow strategies",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/fewshot.json"), help="JSON results file"
    )
    return parser.parse_args(argv)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    specs = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for spec in specs:
        build_strategy(spec)  # fail on a bad name or setting before minutes of embedding
    limits = {spec: int(n) for spec, n in (item.rsplit("=", 1) for item in args.max_episodes)}
    if unknown := set(limits) - set(specs):
        raise SystemExit(
            f"--max-episodes names {', '.join(sorted(unknown))}, not in --strategies {args.strategies}"
        )
    backbone = fewtune.create_backbone()
    results = []
    for folder in args.data:
        dataset = fewtune.load_dataset(folder)
        start = time.perf_counter()
        embedded = embed_files(backbone, dataset.paths, cache=True, progress=True)
        print(
            f"{folder.name}: {len(dataset.paths)} images, {len(dataset.classes)} classes, "
            f"embedded in {time.perf_counter() - start:.1f} s ({embedded.computed} computed, rest cached)"
        )
        for way in ints(args.way):
            for shot in ints(args.shots):
                episodes = sample_episodes(
                    dataset.labels, way, shot, args.queries, args.episodes, seed=args.seed
                )
                for spec in specs:
                    setting = Setting(
                        way, shot, args.queries, args.seed, episodes[: limits.get(spec, len(episodes))]
                    )
                    [row] = run_setting(
                        [spec],
                        embedded.features,
                        dataset.labels,
                        setting,
                        images=Images(backbone, dataset.paths),
                    )
                    results.append({"dataset": folder.name, **row, "seed": args.seed})
                    print(
                        f"  {way}-way {shot}-shot {spec:>16}: {row['mean']:.2f} ± {row['ci95']:.2f} % "
                        f"({row['episodes']} episodes, {row['seconds']:.1f} s)",
                        flush=True,
                    )
    print()
    print(markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return results


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | way | shot | strategy | accuracy (%) | episodes | seconds |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['dataset']} | {r['way']} | {r['shot']} | {r['strategy']} | {r['mean']:.2f} ± "
            f"{r['ci95']:.2f} "
            f"| {r['episodes']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
