"""fewtune against the tools people use today, on the same frozen features and the same episodes.

Frozen-feature peers (this file, so far): easyfsl's PrototypicalNetworks, SimpleShot, and the
transductive BD-CSPN, TIM and PT-MAP (all with ``feature_normalization=2``, their documented
defaults otherwise), and scikit-learn's LogisticRegression on L2-normalised features (defaults,
``max_iter=1000`` so it converges). Episodes come from ``fewtune benchmark``'s sampler with the
same seed (or from ``--episodes-file``) and are written next to the results, so any other tool
can be run on them. Fine-tuning peers (fastai) wait for fewtune's own fine-tuning strategy.

    pip install -e ".[bench]"
    python bench/peers.py --data ../shared/data/caltech101 ../shared/data/omniglot --episodes 300 --seed 1

(seed 1: the transductive prototype's two settings were chosen on seed-0 episodes.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fewtune
from fewtune.benchmark import episode_accuracy, load_episodes, sample_settings, save_episodes
from fewtune.episodes import mean_ci95
from fewtune.features import embed_files

FEWTUNE = ["prototype", "probe", "auto", "prototype:transductive=true"]
EASYFSL = ["PrototypicalNetworks", "SimpleShot", "BDCSPN", "TIM", "PTMAP"]


def easyfsl_accuracy(name: str, features: torch.Tensor, labels: list[int], episode) -> float:
    import easyfsl.methods

    support, query = (torch.tensor(y) for y in episode.local_labels(labels))
    model = getattr(easyfsl.methods, name)(nn.Identity(), feature_normalization=2)
    model.process_support_set(features[episode.support], support)
    with torch.set_grad_enabled(model.is_transductive()):  # TIM / PT-MAP optimise at inference
        scores = model(features[episode.query])
    return float((scores.argmax(1) == query).float().mean())


def sklearn_accuracy(features: torch.Tensor, labels: list[int], episode) -> float:
    from sklearn.linear_model import LogisticRegression

    support, query = episode.local_labels(labels)
    unit = torch.nn.functional.normalize(features, dim=1).numpy()
    model = LogisticRegression(max_iter=1000).fit(unit[episode.support], support)
    return float((model.predict(unit[episode.query]) == np.array(query)).mean())


def transductive(method: str) -> bool:
    """Looks at the unlabelled queries of an episode, which inductive methods do not."""
    return method.split()[-1] in ("BDCSPN", "TIM", "PTMAP") or "transductive=true" in method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes-file", type=Path, help="run on these episodes (one data folder only)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/peers.json"))
    args = parser.parse_args()

    backbone = fewtune.create_backbone()
    rows = []
    torch.set_num_threads(1)  # tiny per-episode problems: see fewtune.benchmark.run_setting
    for folder in args.data:
        dataset = fewtune.load_dataset(folder)
        features = embed_files(backbone, dataset.paths, progress=True).features
        if args.episodes_file:
            settings = load_episodes(args.episodes_file, dataset)
        else:
            plan = [(5, 1), (5, 5)] + ([(20, 1)] if folder.name == "omniglot" else [])
            settings = [s for way, shot in plan for s in sample_settings(dataset, [way], [shot], args.queries, args.episodes, args.seed)]
            save_episodes(args.out.with_name(f"episodes-{folder.name}.json"), dataset, settings)
        for setting in settings:
            methods = [(f"fewtune {n}", lambda e, n=n: episode_accuracy(n, features, dataset.labels, e)) for n in FEWTUNE]
            methods += [(f"easyfsl {n}", lambda e, n=n: easyfsl_accuracy(n, features, dataset.labels, e)) for n in EASYFSL]
            methods += [("sklearn LogisticRegression", lambda e: sklearn_accuracy(features, dataset.labels, e))]
            for name, accuracy in methods:
                started = time.perf_counter()
                mean, ci = mean_ci95([accuracy(e) for e in setting.episodes])
                row = {
                    "dataset": folder.name, "method": name, "transductive": transductive(name),
                    "way": setting.way, "shot": setting.shot, "queries": setting.queries, "episodes": len(setting.episodes),
                    "mean": round(100 * mean, 2), "ci95": round(100 * ci, 2), "seconds": round(time.perf_counter() - started, 1),
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    settings = list(dict.fromkeys((r["dataset"], r["way"], r["shot"]) for r in rows))
    header = "| method | " + " | ".join(f"{d} {w}-way {k}-shot" for d, w, k in settings) + " |"
    lines = [header, "|---|" + "---:|" * len(settings)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for d, w, k in settings:
            [r] = [r for r in rows if (r["method"], r["dataset"], r["way"], r["shot"]) == (method, d, w, k)]
            cells.append(f"{r['mean']:.2f} ± {r['ci95']:.2f}")
        mark = " (transductive)" if rows[[r["method"] for r in rows].index(method)]["transductive"] else ""
        lines.append(f"| {method}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
