"""Single-image predict against a bare forward of the same preprocessed image, interleaved.

Each of ``--images`` photos is made new (random bytes appended: never in the feature cache), then
timed in turn: ``Classifier.predict([file])`` (read, hash, cache lookup, decode, preprocess,
forward, cache write, probabilities, novelty), and the bare pipeline any system runs: decode and
preprocess, then the forward of the network as timm builds it (not fewtune's ``embed``, which runs a
BatchNorm-folded copy: see ``fewtune.features.folded``). Reports the p50s of predict, of the bare
forward, of decode + forward and of fewtune's own ``embed``, and the ratios of predict to each.
On a busy machine the forward's noise swamps the rest, so the overhead is also measured alone:
the same loop with ``backbone.embed`` replaced by a constant, predict minus decode + preprocess
(``overhead_p50_ms``).

    python bench/predict_latency.py MODEL.fewtune --photos ../shared/data/caltech101 --images 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--photos", type=Path, required=True, help="a folder of class folders of photos")
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args(argv)

    import torch

    import fewtune
    from fewtune.data.images import load
    from fewtune.features.embedding import build_transform
    from fewtune.features.folded import pre_logits

    classifier = fewtune.load(args.model)
    photos = [sorted(p.iterdir())[-1] for p in sorted(args.photos.iterdir()) if p.is_dir()][: args.images + 1]
    transform = build_transform(classifier.backbone.preprocessing)
    network = classifier.backbone.model  # the network as timm builds it, BatchNorms unfolded
    ours, bare, decoded, embedded = [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for n, photo in enumerate(photos):
            fresh = Path(scratch) / f"{n}{photo.suffix}"
            fresh.write_bytes(photo.read_bytes() + os.urandom(8))
            start = time.perf_counter()
            image = transform(load(fresh)).unsqueeze(0)
            middle = time.perf_counter()
            with torch.inference_mode():
                pre_logits(network, image)
            end = time.perf_counter()
            bare.append(end - middle)
            decoded.append(end - start)
            start = time.perf_counter()
            classifier.backbone.embed(image)
            embedded.append(time.perf_counter() - start)
            start = time.perf_counter()
            classifier.predict([fresh])
            ours.append(time.perf_counter() - start)
        overhead = _overhead(classifier, photos, transform, load, Path(scratch))
    ours, bare, decoded, embedded = ours[1:], bare[1:], decoded[1:], embedded[2:]  # warm-ups
    result = {
        "images": len(ours),
        "predict_p50_ms": round(1000 * statistics.median(ours), 1),
        "forward_p50_ms": round(1000 * statistics.median(bare), 1),
        "decode_and_forward_p50_ms": round(1000 * statistics.median(decoded), 1),
        "fewtune_embed_p50_ms": round(1000 * statistics.median(embedded), 1),
    }
    result["overhead_p50_ms"] = round(1000 * overhead, 2)
    result["ratio"] = round(result["predict_p50_ms"] / result["forward_p50_ms"], 2)
    result["ratio_to_decode_and_forward"] = round(
        result["predict_p50_ms"] / result["decode_and_forward_p50_ms"], 2
    )
    print(json.dumps(result))
    return result


def _overhead(classifier, photos: list[Path], transform, load, scratch: Path) -> float:
    """p50 of predict with a constant for a forward, minus the p50 of decode + preprocess alone."""
    import torch

    dim, embed = classifier.backbone.dim, classifier.backbone.embed
    classifier.backbone.embed = lambda batch: torch.full((len(batch), dim), 0.01)
    ours, decoded = [], []
    try:
        for rep in range(3):
            for n, photo in enumerate(photos):
                fresh = scratch / f"stub-{rep}-{n}{photo.suffix}"
                fresh.write_bytes(photo.read_bytes() + os.urandom(8))
                start = time.perf_counter()
                transform(load(fresh))
                decoded.append(time.perf_counter() - start)
                start = time.perf_counter()
                classifier.predict([fresh])
                ours.append(time.perf_counter() - start)
    finally:
        classifier.backbone.embed = embed
    return statistics.median(ours[1:]) - statistics.median(decoded[1:])


if __name__ == "__main__":
    main()
