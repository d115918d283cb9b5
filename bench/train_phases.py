"""Where `fewtune train --strategy finetune` spends its time, phase by phase: which waits need a
progress bar or a spinner (any phase over a second gets one).

Builds a 5-way 5-shot task from the first classes and images of DATA (symlinks in a temporary
folder), trains with the feature cache off, and prints the seconds of each phase as JSON.

    python bench/train_phases.py --data ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import fewtune
from fewtune.model import head
from fewtune.model import training as trainer
from fewtune.strategies.finetune import decision, loop, views

PHASES = [
    (trainer, "create_backbone", "load the backbone"),
    (trainer, "embed_files", "embed the images (frozen; again after tuning)"),
    (decision, "imagenet_familiarity", "decide: ImageNet familiarity"),
    (decision, "leave_one_out_accuracy", "decide: leave-one-out accuracy"),
    (views, "load_pictures", "decode the pictures"),  # the strategy imports both where it tunes
    (loop, "prepare", "embed the augmented views, imprint the head"),
    (loop, "tune_body", "tune_body in all (views + training steps)"),
    (head.Head, "fit", "fit the head, calibrate, unknown threshold"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    for owner, name, what in PHASES:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*a, _original=original, _what=what, **k):
            started = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                seconds[_what] = round(seconds.get(_what, 0.0) + time.perf_counter() - started, 2)

        setattr(owner, name, timed)
    with tempfile.TemporaryDirectory() as folder:
        for c in sorted(p for p in args.data.iterdir() if p.is_dir())[: args.way]:
            (Path(folder) / c.name).mkdir()
            for image in sorted(c.iterdir())[: args.shot]:
                (Path(folder) / c.name / image.name).symlink_to(image.resolve())
        started = time.perf_counter()
        model = fewtune.train(folder, "finetune", cache=False)
        seconds["total"] = round(time.perf_counter() - started, 2)
    print(
        json.dumps(
            {"data": str(args.data), "body": model.fit_report["body"]["unfreeze"], "seconds": seconds},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
