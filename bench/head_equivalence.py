"""Does the head give the same answers under two versions of fewtune? Records, on real episodes,
what each frozen strategy chooses, its temperature, threshold, probabilities and answers (with
and without transduction), and the fine-tuning decisions; then compares two recordings.

Written to check the move of everything past the backbone from torch to NumPy (session 9): run
``record`` once with each version's ``src`` on ``PYTHONPATH``, then ``compare``. It works with
either API: arrays are handed over as the recording version's strategies take them.

    PYTHONPATH=OLD/src python bench/head_equivalence.py record --out old.json
    python bench/head_equivalence.py record --out new.json
    python bench/head_equivalence.py compare old.json new.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: (dataset, [(way, shot, queries a class)]): 27 episodes with the default --episodes 3
SETTINGS = [
    ("caltech101", [(5, 1, 5), (5, 5, 5), (20, 5, 5), (10, 20, 5), (30, 10, 2)]),
    ("omniglot", [(5, 1, 5), (5, 5, 5), (20, 1, 5), (20, 5, 5)]),
]
STRATEGIES = [
    ("prototype", {}),
    ("probe", {}),
    ("auto", {"candidates": ["probe", "prototype"]}),
    ("prototype-t", {"transductive": True}),
]


def record(data: Path, episodes: int) -> list[dict[str, Any]]:
    from fewtune.features.backbones import create_backbone
    from fewtune.features.embedding import embed_files
    from fewtune.model.calibration import expected_calibration_error
    from fewtune.model.head import Embeddings, Head
    from fewtune.strategies import create_strategy
    from fewtune.strategies.finetune import decision
    from fewtune.strategies.finetune.config import FinetuneConfig

    if "torch" in str(Head.probabilities.__annotations__["features"]):  # a version before session 9
        import torch

        def given(a: np.ndarray) -> Any:
            return torch.as_tensor(a)
    else:
        given = np.asarray

    backbone, rng, rows = create_backbone(), np.random.default_rng(0), []
    for name, settings in SETTINGS:
        folders = sorted(p for p in (data / name).iterdir() if p.is_dir())
        for way, shot, queries in settings:
            for episode in range(episodes):
                support, labels, query, truth = [], [], [], []
                for c, k in enumerate(rng.choice(len(folders), way, replace=False)):
                    files = sorted(folders[k].iterdir())
                    for j, s in enumerate(
                        rng.choice(len(files), min(len(files), shot + queries), replace=False)
                    ):
                        (support if j < shot else query).append(files[s])
                        (labels if j < shot else truth).append(c)
                features = np.asarray(embed_files(backbone, support + query).features)
                x, q, y = (
                    given(features[: len(support)]),
                    given(features[len(support) :]),
                    given(np.array(labels)),
                )
                names = [str(i) for i in range(len(query))]
                row: dict[str, Any] = {"episode": f"{name}:{way}w{shot}s:{episode}"}
                row["choose_body"] = decision.choose_body(FinetuneConfig(), backbone, x, y, way, True)
                row["tune_without_check"] = decision.tune_without_check(backbone, x, y)
                for tag, hyperparameters in STRATEGIES:
                    head = Head(
                        create_strategy(tag.removesuffix("-t"), **hyperparameters),
                        [f"c{i}" for i in range(way)],
                        Embeddings.frozen(x),
                        y,
                    )
                    head.fit()
                    probabilities = np.asarray(head.probabilities(q))
                    row[tag] = {
                        "temperature": head.temperature,
                        "threshold": head.open_set.threshold,
                        "report": json.loads(json.dumps(head.fit_report, default=str)),
                        "probabilities": probabilities.tolist(),
                        "answers": [
                            (p.label, p.score, p.novelty) for p in head.predict(Embeddings.frozen(q), names)
                        ],
                        "transductive": [
                            (p.label, p.score)
                            for p in head.predict(Embeddings.frozen(q), names, transductive=True)
                        ],
                        "balanced": [
                            (p.label, p.score)
                            for p in head.predict(Embeddings.frozen(q), names, transductive="balanced")
                        ],
                        "ece": expected_calibration_error(given(probabilities), given(np.array(truth))),
                    }
                rows.append(row)
                print(row["episode"], row["auto"]["report"].get("chosen"), file=sys.stderr)
    return rows


def compare(old: Any, new: Any, where: str, gaps: dict[str, float], differences: list[str]) -> None:
    """Numbers: the largest gap per field; everything else (labels, choices, reasons) must match."""
    if isinstance(old, dict) and isinstance(new, dict) and set(old) == set(new):
        for key in old:
            compare(old[key], new[key], f"{where}.{key}", gaps, differences)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for a, b in zip(old, new, strict=True):
            compare(a, b, f"{where}[]", gaps, differences)
    elif isinstance(old, (int, float)) and isinstance(new, float):
        field = where.split(".", 1)[1]
        gap = 0.0 if old == new else abs(old - new)
        gaps[field] = max(gaps.get(field, 0.0), gap)
    elif old != new:
        differences.append(f"{where}: {old!r:.120} -> {new!r:.120}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    recording = commands.add_parser("record")
    recording.add_argument("--out", type=Path, required=True)
    recording.add_argument("--data", type=Path, default=DATA)
    recording.add_argument("--episodes", type=int, default=3, help="per setting")
    comparing = commands.add_parser("compare")
    comparing.add_argument("old", type=Path)
    comparing.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        args.out.write_text(json.dumps(record(args.data, args.episodes)))
        return
    old, new = (json.loads(p.read_text()) for p in (args.old, args.new))
    gaps: dict[str, float] = {}
    differences: list[str] = []
    for a, b in zip(old, new, strict=True):
        compare(a, b, a["episode"], gaps, differences)
    for field, gap in sorted(gaps.items(), key=lambda item: -item[1])[:15]:
        print(f"{gap:.1e}  {field}")
    print(f"{len(old)} episodes; {len(differences)} differences other than numbers")
    for line in differences[:20]:
        print("  " + line)
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
