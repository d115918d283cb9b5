"""Which temperature should a fine-tuned body keep? Pooled ECE of its known-class test images at
T = 1 and at the temperature fitted on images held out of a cross-fitted tune.

Runs ``--strategy finetune`` through :func:`bench.default_path.run_episode` on development
episodes (seed 0) and saves each tuned task's T = 1 probabilities and fitted temperature, then
prints the pooled ECE for several rules, among them the one constant temperature that fits these
tasks' pooled test predictions best (a rule for other tasks, so fit it on development episodes
only). At 1 shot the fitted temperature is 1 (nothing is held out). At 5 shots it exists only in
code before the change it informed (commit e568b3c), where the cross-fitted tune also ran for
``finetune``, and fewtune ran on torch: collect there with this script and ``default_path.py``
as of 273971d (the last on torch), whose records this one still reads:

    git worktree add /tmp/before e568b3c && cd /tmp/before
    python /path/to/bench/tuned_temperature.py ../shared/data/omniglot --episodes 20 --out /tmp/tuned.pt
    python bench/tuned_temperature.py ../shared/data/omniglot --shot 1 --episodes 24 --out /tmp/t1.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import default_path  # noqa: E402

import fewtune  # noqa: E402
from fewtune.evaluate.episodes import sample_episodes  # noqa: E402
from fewtune.model.calibration import expected_calibration_error  # noqa: E402
from fewtune.numeric import cross_entropy, softmax  # noqa: E402


def collect(data: Path, way: int, shot: int, episodes: int, out: Path) -> None:
    dataset = fewtune.load_dataset(data)
    backbone = fewtune.create_backbone()
    trained: list = []
    train = fewtune.train
    default_path.fewtune.train = lambda *a, **k: trained.append(train(*a, **k)) or trained[-1]  # type: ignore[attr-defined]
    records = []
    for i, episode in enumerate(sample_episodes(dataset.labels, 2 * way, shot, 10, episodes, 0)):
        row, (raw, _, truth) = default_path.run_episode(dataset, episode, way, "finetune", backbone)
        records.append(
            {"tuned": bool(row["tuned"]), "raw": raw, "truth": truth, "T": trained[-1].temperature}
        )
        torch.save(records, out)  # torch's file format: the one the torch-era version wrote (see above)
        print(i, row["closed_acc"], row["tuned"], round(trained[-1].temperature, 3), flush=True)


def analyse(path: Path) -> None:
    records = [
        {**r, "raw": np.asarray(r["raw"]), "truth": np.asarray(r["truth"])}  # tensors if saved on torch
        for r in torch.load(path, weights_only=False)
        if r["tuned"]
    ]
    truth = np.concatenate([r["truth"] for r in records])
    rules = {"T = 1": lambda t: 1.0, "fitted": lambda t: t, "sqrt(fitted)": lambda t: t**0.5}
    print(f"{len(records)} tuned tasks")
    grid = [round(0.5 + 0.05 * i, 2) for i in range(51)]  # 0.5 .. 3.0
    log_p = np.concatenate([np.log(np.maximum(r["raw"], 1e-12)) for r in records])
    nll = [cross_entropy(log_p / t, truth) for t in grid]
    best = grid[nll.index(min(nll))]
    rules[f"one constant for every tuned task, least pooled NLL ({best})"] = lambda t: best
    for name, rule in rules.items():
        probabilities = np.concatenate(
            [softmax(np.log(np.maximum(r["raw"], 1e-12)) / rule(r["T"])) for r in records]
        )
        ece = 100 * expected_calibration_error(probabilities, truth)
        confidence = 100 * float(probabilities.max(1).mean())
        accuracy = 100 * float((probabilities.argmax(1) == truth).mean())
        print(f"{name}: pooled ECE {ece:.2f}, mean confidence {confidence:.1f}, accuracy {accuracy:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="?")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tuned_temperature.pt"))
    parser.add_argument("--analyse", action="store_true", help="only analyse --out")
    args = parser.parse_args()
    if not args.analyse:
        collect(args.data, args.way, args.shot, args.episodes, args.out)
    analyse(args.out)
