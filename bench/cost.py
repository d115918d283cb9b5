"""Fit cost of the frozen strategies as the support set grows: seconds and peak memory.

For each number of classes x examples per class, each strategy is fitted as ``fewtune train``
fits it (``fit`` then ``held_out``, the held-out predictions calibration needs) on 1280-dim embeddings, in
one process, one strategy after another; peak memory is the rise of the process's peak RSS
during the fit (reset before each fit through /proc/self/clear_refs, Linux only).

Embeddings are real (Omniglot from the feature cache, ``--omniglot``) where the setting fits in
it (at most 136 classes x 20 images), else synthetic of the same size: class centres and noise
drawn non-negative like pooled ReLU features. Every row says which.

    python bench/cost.py --omniglot ../shared/data/omniglot --out bench/results/cost.json --plot docs/cost.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DIM = 1280


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="5,20,60,150")
    parser.add_argument("--shots", default="1,5,20,50", help="examples per class")
    parser.add_argument("--strategies", default="prototype,probe,auto")
    parser.add_argument(
        "--omniglot", type=Path, help="Omniglot folder: real cached features where the setting fits"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/cost.json"))
    parser.add_argument("--plot", type=Path, help="write a plot of fit CPU seconds against support examples")
    parser.add_argument(
        "--render", action="store_true", help="only print the table (and plot) of the --out file"
    )
    return parser.parse_args(argv)


def synthetic(classes: int, shots: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    words = np.random.RandomState(seed)
    centres = cubed(uniform(words, classes, DIM))
    labels = np.repeat(np.arange(classes), shots)
    return centres[labels] + 1.5 * cubed(uniform(words, len(labels), DIM)), labels


def uniform(words: np.random.RandomState, *shape: int) -> np.ndarray:
    """float32 in [0, 1): draw for draw what ``torch.rand`` gave from the same seed (the Mersenne
    Twister seeded alike, as in ``fewtune.numeric.Seeded``; torch keeps each word's low 24 bits),
    so the synthetic rows are the ones measured when this ran on torch."""
    return (words.randint(0, 2**32, size=shape, dtype=np.uint32) & 0xFFFFFF).astype(np.float32) * 2.0**-24


def cubed(x: np.ndarray) -> np.ndarray:
    return x * x * x  # torch's pow(3): np.power(x, 3) can round the last bit differently


def real(
    features: np.ndarray, all_labels: np.ndarray, classes: int, shots: int
) -> tuple[np.ndarray, np.ndarray]:
    rows = [np.flatnonzero(all_labels == c)[:shots] for c in range(classes)]
    return features[np.concatenate(rows)], np.repeat(np.arange(classes), shots)


def peak_rss_reset() -> int:
    """Reset the peak RSS to the current RSS; returns the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(name: str, features: np.ndarray, labels: np.ndarray, classes: int) -> dict:
    from fewtune.strategies import create_strategy

    strategy = create_strategy(name)
    before = peak_rss_reset()
    start = time.perf_counter()
    cpu = time.process_time()
    strategy.fit(features, labels, classes)
    strategy.held_out(features, labels, classes)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    report = strategy.fit_report()
    return {
        "strategy": name,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "peak_mb": round(max(0, _status("VmHWM") - before) / 2**20, 1),
        "chosen": report.get("chosen"),
        "l2": report.get("l2"),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.render:
        rows = json.loads(args.out.read_text())
        print(markdown(rows))
        if args.plot:
            plot(rows, args.plot)
        return rows
    omniglot = None
    if args.omniglot:
        import fewtune
        from fewtune.features.embedding import embed_files

        dataset = fewtune.load_dataset(args.omniglot)
        embedded = embed_files(fewtune.create_backbone(), dataset.paths, cache=True)
        if embedded.computed:
            print(f"note: {embedded.computed} Omniglot embeddings were not cached and had to be computed")
        omniglot = (embedded.features, np.array(dataset.labels)[embedded.kept], len(dataset.classes))
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for classes in [int(c) for c in args.classes.split(",")]:
        for shots in [int(s) for s in args.shots.split(",")]:
            if omniglot and classes <= omniglot[2] and shots <= 20:
                (features, labels), source = real(omniglot[0], omniglot[1], classes, shots), "omniglot"
            else:
                (features, labels), source = synthetic(classes, shots), "synthetic"
            for name in args.strategies.split(","):
                row = {
                    "classes": classes,
                    "shots": shots,
                    "examples": len(labels),
                    "features": source,
                    **measure(name, features, labels, classes),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print()
    print(markdown(rows))
    if args.plot:
        plot(rows, args.plot)
    return rows


def markdown(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    header = (
        "| classes × examples | features | " + " | ".join(f"{n}: CPU s (wall s) / MB" for n in names) + " |"
    )
    lines = [header, "|---|---|" + "---:|" * len(names)]
    for key in dict.fromkeys((r["classes"], r["shots"]) for r in rows):
        cells = {r["strategy"]: r for r in rows if (r["classes"], r["shots"]) == key}
        source = next(iter(cells.values()))["features"]
        values = [
            f"{cells[n]['cpu_seconds']:.2f} ({cells[n]['seconds']:.1f}) / {cells[n]['peak_mb']:.0f}"
            if n in cells
            else "–"
            for n in names
        ]
        lines.append(f"| {key[0]} × {key[1]} | {source} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["strategy"] for r in rows))
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=True)
    for ax, name in zip(axes if len(names) > 1 else [axes], names):
        for classes in sorted({r["classes"] for r in rows}):
            points = sorted(
                (r["examples"], max(r["cpu_seconds"], 1e-3))
                for r in rows
                if r["strategy"] == name and r["classes"] == classes
            )
            ax.plot(*zip(*points), marker="o", label=f"{classes} classes")
        ax.set(title=name, xlabel="support examples (classes × per class)", xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fit + held-out logits, CPU s") if len(names) > 1 else axes.set_ylabel("fit, CPU s")
    axes[0].legend() if len(names) > 1 else axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
