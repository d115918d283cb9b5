"""Fine-tuning speed, side by side on one 5-way 5-shot task (same data, backbone and settings):

(a) the head's "catch up" phase on cached features vs. the same phase run through the frozen
    backbone every epoch (what libraries without a feature cache do);
(b) fewtune's body fine-tuning (``tune_body``, with and without per-epoch checkpoints) vs. a
    minimal hand-written PyTorch loop doing the same work: decode, the same number of augmented
    views per image, frozen early stages once per view, then the same number of steps on the same
    top stages with AdamW and a cosine head.

Each variant runs in its own process, so its peak memory (max RSS) is its own.

    python bench/finetune_speed.py --data ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("head_cached", "head_backbone", "tune", "tune_checkpoint", "hand_loop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (one subfolder per class)")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="picks the task")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--out", type=Path, default=Path("bench/results/finetune-speed.json"))
    return parser.parse_args(argv)


def task(args: argparse.Namespace):
    import torch

    import fewtune
    from fewtune.evaluate.episodes import sample_episodes

    dataset = fewtune.load_dataset(args.data)
    episode = sample_episodes(dataset.labels, args.way, args.shot, 1, 1, seed=args.seed)[0]
    support, _ = episode.local_labels(dataset.labels)
    return [dataset.paths[i] for i in episode.support], torch.tensor(support), args.way


def measure(args: argparse.Namespace) -> dict:
    """One variant, timed in this process."""
    import torch
    import torch.nn.functional as F

    import fewtune
    from fewtune.features.embedding import build_transform, embed_files
    from fewtune.strategies.finetune.config import FinetuneConfig
    from fewtune.strategies.finetune.decision import AUTO_TOP
    from fewtune.strategies.finetune.head import CosineHead, imprint, train_head
    from fewtune.strategies.finetune.loop import tune_body
    from fewtune.strategies.finetune.views import load_pictures

    paths, labels, way = task(args)
    backbone = fewtune.create_backbone()
    config = FinetuneConfig()
    # warm the cache (and the code paths) outside the timing; the head trains on torch tensors
    features = torch.from_numpy(embed_files(backbone, paths).features)
    started = time.perf_counter()
    extra: dict = {}
    if args.variant == "head_cached":
        features = torch.from_numpy(embed_files(backbone, paths).features)
        train_head(CosineHead(imprint(features, labels, way)), features, labels, config)
    elif args.variant == "head_backbone":  # preprocessed tensors in memory: the cheapest uncached version
        transform = build_transform(backbone.preprocessing)
        batch = torch.stack([transform(p) for p in load_pictures(paths)])
        head = CosineHead(imprint(features, labels, way))
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        for _ in range(config.head_epochs):
            with torch.no_grad():
                embedded = backbone.model.forward_head(
                    backbone.model.forward_features(batch), pre_logits=True
                )
            loss = F.cross_entropy(head(embedded), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    elif args.variant in ("tune", "tune_checkpoint"):
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = Path(folder) / "checkpoint" if args.variant == "tune_checkpoint" else None
            result = tune_body(
                backbone, load_pictures(paths), labels, way, config, AUTO_TOP, checkpoint=checkpoint
            )
        extra = {"steps": result.steps, "epochs": result.epochs, "views": result.views}
    elif args.variant == "hand_loop":
        extra = hand_loop(backbone, paths, labels, way, config)
    seconds = time.perf_counter() - started
    return {
        "variant": args.variant,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }


def hand_loop(backbone, paths, labels, way, config) -> dict:
    """What a careful PyTorch user writes by hand for the same recipe, with no framework around it."""
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageOps

    from fewtune.strategies.finetune.config import TARGET_STEPS
    from fewtune.strategies.finetune.decision import AUTO_TOP
    from fewtune.strategies.finetune.views import view_transform, views_per_image

    first = len(backbone.model.blocks) - AUTO_TOP  # the top AUTO_TOP stages: blocks[first:], conv_head, bn2
    model = backbone.model.eval().requires_grad_(False)
    for module in (*model.blocks[first:], model.conv_head, model.bn2):
        module.requires_grad_(True)
    torch.manual_seed(config.seed)
    transform = view_transform(backbone.preprocessing, "light")
    pictures = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in paths]
    views = [
        (transform(p), int(y))
        for p, y in zip(pictures, labels, strict=True)
        for _ in range(views_per_image(config, len(pictures)))
    ]
    chunk = config.batch_size
    with torch.no_grad():
        hidden = torch.cat(
            [
                model.blocks[:first](
                    model.bn1(model.conv_stem(torch.stack([v for v, _ in views[s : s + chunk]])))
                )
                for s in range(0, len(views), chunk)
            ]
        )
    targets = torch.tensor([y for _, y in views])

    def top(h):
        return model.forward_head(model.bn2(model.conv_head(model.blocks[first:](h))), pre_logits=True)

    with torch.no_grad():
        start = torch.cat(
            [top(hidden[s : s + config.batch_size]) for s in range(0, len(hidden), config.batch_size)]
        )
    prototypes = F.normalize(
        torch.zeros(way, start.shape[1]).index_add_(0, targets, F.normalize(start, dim=1)), dim=1
    )
    weight, scale = torch.nn.Parameter(prototypes), torch.nn.Parameter(torch.tensor(10.0))
    body = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [weight, scale], "lr": config.lr}, {"params": body, "lr": config.body_lr}],
        weight_decay=config.weight_decay,
    )
    steps = math.ceil(len(views) / config.batch_size) * max(
        1, round(TARGET_STEPS / math.ceil(len(views) / config.batch_size))
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[config.lr, config.body_lr], total_steps=steps, pct_start=0.1
    )
    for _ in range(steps):
        batch = torch.randint(len(views), (config.batch_size,))
        logits = scale * F.normalize(top(hidden[batch]), dim=1) @ F.normalize(weight, dim=1).T
        loss = F.cross_entropy(logits, targets[batch], label_smoothing=config.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return {"steps": steps, "views": len(views)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args)))
        return {}
    rows = {}
    for variant in VARIANTS:
        runs = []
        for _ in range(args.repeats):
            command = [
                sys.executable,
                __file__,
                "--data",
                str(args.data),
                "--way",
                str(args.way),
                "--shot",
                str(args.shot),
                "--seed",
                str(args.seed),
                "--variant",
                variant,
            ]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        runs.sort(key=lambda r: r["seconds"])
        rows[variant] = {**runs[len(runs) // 2], "all_seconds": [round(r["seconds"], 3) for r in runs]}
        row = rows[variant]
        print(
            f"{variant:>16}: {row['seconds']:.3f} s (runs {row['all_seconds']}), "
            f"peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    summary = {
        "task": f"{args.data.name} {args.way}-way {args.shot}-shot (seed {args.seed})",
        "head_phase_speedup_cached_vs_backbone": round(
            rows["head_backbone"]["seconds"] / rows["head_cached"]["seconds"], 1
        ),
        "tune_overhead_vs_hand_loop_percent": round(
            100 * (rows["tune"]["seconds"] / rows["hand_loop"]["seconds"] - 1), 1
        ),
        "tune_with_checkpoints_overhead_vs_hand_loop_percent": round(
            100 * (rows["tune_checkpoint"]["seconds"] / rows["hand_loop"]["seconds"] - 1), 1
        ),
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
