"""What the feature cache's size cap costs: reads (each hit records its time of use), writes past the
cap (least recently used rows dropped), and the size on disk against the cap.

    python bench/cache_cap.py --rows 20000 --cap-mb 50

Rows are EfficientNet-Lite0 embeddings' size (1280 float32, 5 KB); the cache lives in a temp folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from fewtune.features.cache import FeatureCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument(
        "--batch", type=int, default=500, help="rows per put (one training run's new embeddings)"
    )
    parser.add_argument("--cap-mb", type=float, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(folder, "bench", args.dim, max_bytes=int(args.cap_mb * 1024 * 1024))
        keys = [f"{i:064x}" for i in range(args.rows)]
        put_seconds = []
        for start in range(0, args.rows, args.batch):
            batch = {
                k: rng.standard_normal(args.dim).astype(np.float32) for k in keys[start : start + args.batch]
            }
            began = time.perf_counter()
            cache.put_many(batch)
            put_seconds.append(time.perf_counter() - began)
        recent = keys[-2000:]
        timings = {}
        for bookkeeping in (False, True, False, True):  # alternated: the page cache is as warm for both
            if bookkeeping:
                del cache._touch
            else:
                cache._touch = lambda keys: None  # what a read cost before the cap
            began = time.perf_counter()
            hits = cache.get_many(recent)
            timings[bookkeeping] = time.perf_counter() - began
        kept = len(cache.get_many(keys))
        cache.close()
        size = sum(p.stat().st_size for p in Path(folder).iterdir())
    print(
        f"rows written {args.rows} x {args.dim * 4 / 1024:.0f} KB in batches of {args.batch}, cap "
        f"{args.cap_mb:g} MB"
    )
    print(
        f"put: median {1000 * np.median(put_seconds):.1f} ms, max {1000 * max(put_seconds):.1f} ms per batch"
    )
    print(
        f"get 2000 recent rows: {1000 * timings[True]:.1f} ms recording their use, "
        f"{1000 * timings[False]:.1f} ms without; {len(hits)} hits"
    )
    print(f"rows kept {kept}, on disk {size / 1024 / 1024:.1f} MB")


if __name__ == "__main__":
    main()
