"""Task by task: what tuning does to the 1-shot episodes whose familiarity is in [LOW, HIGH).

`auto` tunes a 1-shot task when the mean ImageNet top-1 probability of its support images is
below a gate (``FAR_FROM_IMAGENET``). This reruns, on the same seeded episodes as
``bench/default_path.py``, the tasks between two candidate gates with ``auto`` (the gate set to
HIGH for the run, so it tunes them) and with ``probe``, and sums the differences: what the gate
at LOW instead of HIGH changes in the 100-episode accuracy.

    python bench/one_shot_gate.py ../shared/data/omniglot --seed 0 --low 0.13 --high 0.15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from default_path import run_episode  # noqa: E402

import fewtune  # noqa: E402
from fewtune.evaluate.episodes import sample_episodes  # noqa: E402
from fewtune.features.embedding import embed_files  # noqa: E402
from fewtune.strategies.finetune import decision  # noqa: E402
from fewtune.strategies.finetune.decision import imagenet_familiarity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--low", type=float, default=0.13)
    parser.add_argument("--high", type=float, default=0.15)
    args = parser.parse_args()
    decision.FAR_FROM_IMAGENET = args.high  # read at call time: auto tunes every task below HIGH
    backbone = fewtune.create_backbone()
    dataset = fewtune.load_dataset(args.data)
    features = embed_files(backbone, dataset.paths).features
    episodes = sample_episodes(dataset.labels, 10, 1, 10, args.episodes, args.seed)
    diffs = []
    for n, episode in enumerate(episodes):
        known = [i for i in episode.support if dataset.labels[i] in episode.classes[:5]]
        familiarity = imagenet_familiarity(backbone, features[known])
        if familiarity is None or not args.low <= familiarity < args.high:
            continue
        tuned, _ = run_episode(dataset, episode, 5, "auto", backbone)
        frozen, _ = run_episode(dataset, episode, 5, "probe", backbone)
        diffs.append((tuned["closed_acc"] - frozen["closed_acc"], tuned["open_acc"] - frozen["open_acc"]))
        print(
            f"episode {n}: familiarity {familiarity:.4f}, auto {tuned['closed_acc']:.2f} (tuned "
            f"{tuned['tuned']:.0f}), probe {frozen['closed_acc']:.2f}",
            flush=True,
        )
    total = np.array(diffs).sum(axis=0) if diffs else np.zeros(2)
    print(
        f"{args.data.name}: {len(diffs)} tasks; auto - probe summed over them: closed {total[0]:+.2f}, "
        f"open {total[1]:+.2f} (divide by {args.episodes} for the change in the mean)"
    )


if __name__ == "__main__":
    main()
