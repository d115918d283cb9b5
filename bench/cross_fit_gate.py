"""Task by task: what `auto`'s cross-fitted check costs on the 5-shot tasks it keeps frozen.

With two or more examples per class, `auto` tunes the body only when a body tuned on half of each
class classifies the other half better than frozen features do. On ~15 held-out images that check
is noisy and ties are common. This reruns, on the same seeded episodes as
``bench/default_path.py``, every task whose ImageNet familiarity is in [LOW, HIGH) with ``auto``
as it is, and each task it kept frozen also with ``finetune`` (which tunes it), and prints the
check's counts beside both accuracies: enough to score any rule on the counts and the familiarity
without tuning again. At the end it sums, over the tasks in ``--out``, what tuning each task
`auto` kept frozen would change: for every task, for those where the check was a tie, and for
those on look-alike classes (which `auto` now tunes without the check).

    python bench/cross_fit_gate.py ../shared/data/omniglot --seed 0 --episodes 50 --out gate.json
    python bench/cross_fit_gate.py ../shared/data/omniglot --seed 0 --low 0.13 --high 0.25 --similarity
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import default_path  # noqa: E402
from default_path import familiarity_band, run_episode  # noqa: E402

import fewtune  # noqa: E402
from fewtune.strategies.finetune.decision import ALIKE, FAMILIARITY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--low", type=float, default=0.0)
    parser.add_argument("--high", type=float, default=0.13)
    parser.add_argument("--out", type=Path, help="JSON lines, one task each (required but with --similarity)")
    parser.add_argument("--summary", action="store_true", help="only summarise --out")
    parser.add_argument(
        "--similarity", action="store_true", help="only the band's between-class similarity, no tuning"
    )
    args = parser.parse_args()
    if args.out is None and not args.similarity:
        parser.error("--out is required")
    if args.summary:
        return summarise([json.loads(line) for line in args.out.read_text().splitlines()], args.episodes)
    dataset, backbone, band = familiarity_band(
        args.data, args.shot, args.episodes, args.seed, args.low, args.high
    )
    if args.similarity:
        return describe_similarity(band)
    trained: list[fewtune.Classifier] = []
    train = fewtune.train

    def keep(*a, **k):  # the classifier run_episode trains, for its fit report
        trained.append(train(*a, **k))
        return trained[-1]

    default_path.fewtune.train = keep  # type: ignore[attr-defined]
    with args.out.open("a") as out:
        for n, episode, familiarity, similarity in band:
            auto, _ = run_episode(dataset, episode, 5, "auto", backbone)
            tuning = trained[-1].fit_report.get("fine-tuning", {})
            row = {
                "episode": n,
                "familiarity": round(familiarity, 4),
                "similarity": round(similarity, 4),
                "auto": auto,
                **tuning.get("cross_fit", {}),
            }
            if not auto["tuned"]:
                row["finetune"], _ = run_episode(dataset, episode, 5, "finetune", backbone)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(
                f"episode {n}: familiarity {familiarity:.3f}, check {row.get('tuned_correct')} vs "
                f"{row.get('frozen_correct')} of {row.get('held_out')}, auto {auto['closed_acc']:.2f} "
                f"(tuned {auto['tuned']:.0f})"
                + (f", finetune {row['finetune']['closed_acc']:.2f}" if "finetune" in row else ""),
                flush=True,
            )
    summarise([json.loads(line) for line in args.out.read_text().splitlines()], args.episodes)


def describe_similarity(band: list) -> None:
    """How alike the band's classes look (mean between-class cosine similarity of the support):
    a second signal to tell, say, characters from blurry photos at the same familiarity."""
    found = sorted(similarity for *_, similarity in band)
    if not found:
        print("no task in the familiarity range")
    else:
        print(
            f"{len(found)} tasks; between-class similarity min {found[0]:.3f}, median "
            f"{found[len(found) // 2]:.3f}, max {found[-1]:.3f}"
        )


def summarise(rows: list[dict], episodes: int) -> None:
    kept = [r for r in rows if "finetune" in r]
    print(
        f"{len(rows)} tasks in the familiarity range; auto tuned {len(rows) - len(kept)}, "
        f"kept {len(kept)} frozen"
    )
    ties = [r for r in kept if "held_out" in r and r["tuned_correct"] == r["frozen_correct"]]
    # what decision.tune_without_check tunes unchecked: look-alike classes unlike ImageNet
    alike = [r for r in kept if r.get("similarity", 0.0) >= ALIKE and r["familiarity"] < FAMILIARITY]
    for name, tasks in (
        ("every kept task", kept),
        ("kept tasks whose check was a tie", ties),
        (
            f"kept tasks on classes that look alike (similarity >= {ALIKE}, familiarity < {FAMILIARITY})",
            alike,
        ),
        ("kept ties on classes that look alike", [r for r in ties if r in alike]),
    ):
        gain = {
            k: 100 * sum(r["finetune"][k] - r["auto"][k] for r in tasks) for k in ("closed_acc", "open_acc")
        }
        worse = sum(r["finetune"]["closed_acc"] < r["auto"]["closed_acc"] for r in tasks)
        print(
            f"tuning {name} ({len(tasks)}): closed {gain['closed_acc']:+.1f}, open {gain['open_acc']:+.1f} "
            f"points summed ({gain['closed_acc'] / episodes:+.2f} / {gain['open_acc'] / episodes:+.2f} on "
            f"the {episodes}-episode mean), {worse} tasks worse"
        )


if __name__ == "__main__":
    main()
