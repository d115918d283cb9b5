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

from default_path import familiarity_band, run_episode  # noqa: E402

from fewtune.strategies.finetune import decision  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--low", type=float, default=0.13)
    parser.add_argument("--high", type=float, default=0.15)
    args = parser.parse_args()
    decision.FAR_FROM_IMAGENET = args.high  # read at call time: auto tunes every task below HIGH
    dataset, backbone, band = familiarity_band(args.data, 1, args.episodes, args.seed, args.low, args.high)
    diffs = []
    for n, episode, familiarity, _ in band:
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
