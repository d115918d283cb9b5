"""Saved models with the real backbone: concurrent `fewtune add` pairs on one model (classes
lost?), and the time of one save and one load. Not a test; bounded (a few minutes). Put the
fewtune to measure first on PYTHONPATH, e.g.
`PYTHONPATH=src python bench/model_files.py --data /work/shared/data/caltech101 --pairs 2`.
Kills at every step of a save are tests (tests/test_storage.py), not sampled here: a random
kill almost never lands inside the few milliseconds a save takes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fewtune(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fewtune", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def classes(model: Path) -> list[str] | None:
    """The model's classes as `fewtune info --json` reads them, or None if it can't."""
    run = subprocess.run(
        [sys.executable, "-m", "fewtune", "info", str(model), "--json"], capture_output=True, text=True
    )
    return json.loads(run.stdout)["classes"] if run.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of class folders (Caltech-101)")
    parser.add_argument("--pairs", type=int, default=4, help="concurrent add pairs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fewtune-bench-"))
    os.environ["FEWTUNE_CACHE_DIR"] = str(work / "cache")  # never the user's cache; inherited by the CLI runs
    try:
        train = work / "train"
        for name in ("Faces", "Leopards", "Motorbikes"):
            (train / name).mkdir(parents=True)
            for src in sorted((args.data / name).iterdir())[:5]:
                shutil.copy(src, train / name / src.name)
        extra = sorted(
            p for p in args.data.iterdir() if p.is_dir() and p.name not in ("Faces", "Leopards", "Motorbikes")
        )
        model = work / "m.fewtune"
        run = fewtune("train", str(train), "-o", str(model), "--strategy", "prototype", "-q")
        assert run.wait() == 0, run.stderr.read()
        pristine = work / "pristine.fewtune"
        shutil.copytree(model, pristine)

        lost = 0
        for pair in range(args.pairs):
            shutil.rmtree(model)
            shutil.copytree(pristine, model)
            a, b = extra[2 * pair], extra[2 * pair + 1]
            runs = [
                fewtune("add", str(model), str(sorted(c.iterdir())[0]), "--label", c.name, "-q")
                for c in (a, b)
            ]
            codes = [r.wait() for r in runs]
            found = classes(model) or []
            lost += sum(c.name not in found for c in (a, b))
            print(f"pair {pair}: exit {codes}, classes {found}", flush=True)

        import fewtune as library

        clf = library.load(model)
        saves, loads = [], []
        for _ in range(10):
            started = time.perf_counter()
            clf.save(work / "timing.fewtune")
            saves.append(time.perf_counter() - started)
            started = time.perf_counter()
            library.load(work / "timing.fewtune", backbone=clf.backbone)
            loads.append(time.perf_counter() - started)
        result = {
            "fewtune": str(Path(library.__file__).parent),
            "concurrent_add_pairs": args.pairs,
            "classes_lost": lost,
            "save_ms_median": round(1000 * statistics.median(saves), 1),
            "load_ms_median": round(1000 * statistics.median(loads), 1),
            "classes_in_model": len(clf.classes),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
