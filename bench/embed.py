"""Feature-extraction throughput: fewtune's full path (JPEG files -> embeddings) against a plain
timm forward (timm's default memory layout; fewtune runs channels-last) on the same images
already decoded and preprocessed, and the cache's effect on a second `train` (prototype: no
fitting cost, so the difference is the backbone work saved). Measured in one run, on one
machine, so the ratios are fair.

    python bench/embed.py --data ../shared/data/caltech101 --images 320
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

import fewtune
from fewtune.data.dataset import Dataset
from fewtune.data.images import load
from fewtune.features.embedding import build_transform, embed_files


def subset(root: Path, images: int, classes: int) -> Dataset:
    """The first ``images / classes`` files of the first ``classes`` classes (sorted): reproducible."""
    full = fewtune.load_dataset(root)
    per_class = images // classes
    taken: Counter[int] = Counter()
    keep = []
    for i, label in enumerate(full.labels):
        if label < classes and taken[label] < per_class:
            taken[label] += 1
            keep.append(i)
    return Dataset(
        [full.paths[i] for i in keep], [full.labels[i] for i in keep], full.classes[:classes], root
    )


def plain_forward(model: torch.nn.Module, tensors: torch.Tensor, batch_size: int) -> float:
    """Seconds for timm's forward alone over pre-decoded tensors: the network alone."""
    started = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(tensors), batch_size):
            model.forward_head(model.forward_features(tensors[s : s + batch_size]), pre_logits=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder with one subfolder per class")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--out", type=Path, default=Path("bench/results/embed.json"))
    args = parser.parse_args()

    backbone = fewtune.create_backbone(args.backbone)
    data = subset(args.data, args.images, args.classes)
    transform = build_transform(backbone.preprocessing)
    tensors = torch.stack([transform(load(p)) for p in data.paths])
    n = len(data.paths)
    timm_model = copy.deepcopy(backbone.model).to(
        memory_format=torch.contiguous_format
    )  # timm's default layout

    plain_forward(timm_model, tensors[: args.batch_size], args.batch_size)  # warm-up, both paths
    embed_files(backbone, data.paths[: args.batch_size], cache=False)
    timings = {"plain": [], "fewtune": []}
    for _ in range(2):  # interleaved repeats: both paths see the same machine state
        timings["plain"].append(plain_forward(timm_model, tensors, args.batch_size))
        started = time.perf_counter()
        embed_files(backbone, data.paths, cache=False, batch_size=args.batch_size)
        timings["fewtune"].append(time.perf_counter() - started)
    plain, ours = min(timings["plain"]), min(timings["fewtune"])

    with tempfile.TemporaryDirectory() as cache_dir:  # cold, then warm, feature cache
        os.environ["FEWTUNE_CACHE_DIR"] = cache_dir
        started = time.perf_counter()
        fewtune.train(data, "prototype", backbone=backbone)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        fewtune.train(data, "prototype", backbone=backbone)
        warm = time.perf_counter() - started
        started = time.perf_counter()
        fewtune.train(data, "probe", backbone=backbone)  # warm cache: the cost is the head's fit
        probe_warm = time.perf_counter() - started

    result = {
        "images": n,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "plain_timm_forward_images_per_s": round(n / plain, 1),
        "fewtune_files_to_embeddings_images_per_s": round(n / ours, 1),
        "ratio_fewtune_to_plain": round(plain / ours, 3),
        "train_cold_cache_s": round(cold, 2),
        "train_warm_cache_s": round(warm, 3),
        "cache_speedup": round(cold / warm, 1),
        "probe_train_warm_cache_s": round(probe_warm, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
