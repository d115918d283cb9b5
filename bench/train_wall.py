"""Wall seconds of the whole ``fewtune train`` command, every image already in the feature cache.

The first CLASSES classes (sorted) of ``--data`` with their first 20 images each are linked into
a scratch folder; ``fewtune train`` runs once untimed to fill the cache, then is timed per
strategy in a fresh process, as a user would run it. With ``--repeat N`` each timing is taken N
times, each beside a bare ``python -c "import torch"``, and the least is kept (the run least
disturbed by the rest of a shared machine); ``torch_import_s`` then tells how much of the wall
is torch's own import, which no fewtune code can shorten, for a version whose warm ``train``
imports torch (``--src``: since df5d115 none does).

    python bench/train_wall.py --data ../shared/data/caltech101 --classes 10,30,60
    python bench/train_wall.py --data ../shared/data/caltech101 --src OLD_CHECKOUT/src  # another version
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classes", default="10,30,60")
    parser.add_argument("--images", type=int, default=20, help="per class")
    parser.add_argument("--strategies", default="prototype,probe,auto")
    parser.add_argument(
        "--src",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "src",
        help="fewtune sources to time",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated CLASSES:STRATEGY pairs not to run (e.g. 60:probe)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="time each run N times; keep the least")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
    # as an installed fewtune runs: its modules compiled once, not at every start (the untimed
    # first run writes the bytecode); a shell with PYTHONDONTWRITEBYTECODE would add ~0.08 s
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for classes in [int(c) for c in args.classes.split(",")]:
            root = Path(scratch) / f"{classes}x{args.images}"
            for folder in sorted(p for p in args.data.iterdir() if p.is_dir())[:classes]:
                (root / folder.name).mkdir(parents=True)
                for image in sorted(folder.iterdir())[: args.images]:
                    (root / folder.name / image.name).symlink_to(image.resolve())
            command = [
                sys.executable,
                "-m",
                "fewtune",
                "train",
                str(root),
                "-o",
                str(Path(scratch) / "model"),
            ]
            subprocess.run(
                [*command, "--strategy", "prototype"], env=env, check=True, capture_output=True
            )  # fill the cache
            for strategy in args.strategies.split(","):
                if f"{classes}:{strategy}" in skip:
                    continue
                timings = [
                    (_timed([*command, "--strategy", strategy], env), _timed(IMPORT_TORCH, env))
                    for _ in range(args.repeat)
                ]
                (wall, cpu), _ = min(timings)
                row = {
                    "classes": classes,
                    "images": args.images,
                    "strategy": strategy,
                    "wall_s": wall,
                    "cpu_s": cpu,
                }
                if args.repeat > 1:
                    row["runs"] = args.repeat
                    row["torch_import_s"] = min(t[1][0] for t in timings)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


IMPORT_TORCH = [sys.executable, "-c", "import torch"]


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of ``command``."""
    start, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return round(time.perf_counter() - start, 2), round(_children_cpu() - cpu, 2)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
