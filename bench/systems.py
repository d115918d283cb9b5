"""Speed and memory of each system, doing what a user does: from 5 classes x 5 image files to a
classifier, then one image at a time through the system's own predict path.

- feature extraction: fewtune's path (files -> embeddings) against a plain timm forward over the
  same images already decoded and preprocessed, in timm's default memory layout;
- time to a usable classifier, cold (fresh process, empty fewtune feature cache, weights read
  from disk) and warm (the same call again in that process: backbone in memory, files in the OS
  cache, and for fewtune the feature cache filled);
- prediction latency for one image file, p50 / p95 over ``--predictions`` calls;
- peak memory (peak RSS) of the process: each system runs in its own.

All systems use the same weights (fewtune's packaged EfficientNet-Lite0, loaded through timm by the
others) and the same task: the first 5-way 5-shot episode of ``--data`` with ``--seed``.

    python bench/systems.py --data ../shared/data/caltech101
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEMS = (
    "fewtune prototype",
    "fewtune probe",
    "fewtune finetune",
    "easyfsl PrototypicalNetworks",
    "sklearn LogisticRegression",
    "fastai fine_tune",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="picks the task")
    parser.add_argument(
        "--predictions",
        type=int,
        default=30,
        help="single-image predictions timed per system (different images)",
    )
    parser.add_argument(
        "--extraction-images", type=int, default=160, help="images for the extraction throughput"
    )
    parser.add_argument("--skip", default="", help="comma-separated systems to leave out")
    parser.add_argument("--system", help=argparse.SUPPRESS)  # internal: measure one system in this process
    parser.add_argument(
        "--weights", type=Path, help=argparse.SUPPRESS
    )  # internal: the timm-layout weights file
    parser.add_argument("--out", type=Path, default=Path("bench/results/systems.json"))
    return parser.parse_args(argv)


def task(args: argparse.Namespace):
    import fewtune
    from fewtune.evaluate.episodes import sample_episodes

    dataset = fewtune.load_dataset(args.data)
    episode = sample_episodes(dataset.labels, 5, 5, 15, 1, seed=args.seed)[0]
    support_labels, _ = episode.local_labels(dataset.labels)
    support = [dataset.paths[i] for i in episode.support]
    queries = [dataset.paths[i] for i in episode.query]
    names = [dataset.classes[c] for c in episode.classes]
    return dataset, support, support_labels, names, queries


class TimmFeatures:
    """What easyfsl and scikit-learn users write: a timm model with the same weights, timm's transform."""

    def __init__(self, weights: Path):
        import timm
        import torch

        self.torch = torch
        self.model = timm.create_model(
            "tf_efficientnet_lite0",
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay={"file": str(weights)},
        )
        self.model.eval()
        self.transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=self.model))

    def tensors(self, paths: list[Path]):
        from PIL import Image

        return self.torch.stack([self.transform(Image.open(p).convert("RGB")) for p in paths])

    def __call__(self, paths: list[Path]):
        with self.torch.inference_mode():
            return self.model(self.tensors(paths))


def build(
    system: str, support: list[Path], labels: list[int], names: list[str], dataset, weights: Path, state: dict
):
    """Build ``system``'s classifier from the support files; returns ``predict(path) -> label``.
    ``state`` carries what a user would keep in memory between the cold and the warm call."""
    tool, method = system.split(" ", 1)
    if tool == "fewtune":
        import fewtune

        if "backbone" not in state:
            state["backbone"] = fewtune.create_backbone()
        data = fewtune.Dataset(support, labels, names, dataset.source)
        classifier = fewtune.train(data, method, backbone=state["backbone"])
        return lambda path: classifier.predict([path])[0].label
    if tool == "easyfsl":
        import easyfsl.methods
        import torch

        if "timm" not in state:
            state["timm"] = TimmFeatures(weights)
        features = state["timm"]
        model = getattr(easyfsl.methods, method)(features.model, feature_normalization=2)
        with torch.no_grad():  # as easyfsl's own evaluate() does
            model.process_support_set(features.tensors(support), torch.tensor(labels))

        def predict(path: Path) -> int:
            with torch.inference_mode():
                return int(model(features.tensors([path])).argmax(1))

        return predict
    if tool == "sklearn":
        import torch
        from sklearn.linear_model import LogisticRegression

        if "timm" not in state:
            state["timm"] = TimmFeatures(weights)
        features = state["timm"]
        model = LogisticRegression(max_iter=1000).fit(
            torch.nn.functional.normalize(features(support)).numpy(), labels
        )
        return lambda path: int(model.predict(torch.nn.functional.normalize(features([path])).numpy())[0])
    if tool == "fastai":
        from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, set_seed, vision_learner

        set_seed(0)
        dls = ImageDataLoaders.from_lists(
            dataset.source,
            support,
            [str(y) for y in labels],
            valid_pct=0.0,
            seed=0,
            item_tfms=Resize(256),
            batch_tfms=aug_transforms(size=224),
            bs=len(support),
            num_workers=0,
        )
        learn = vision_learner(
            dls, "tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(weights)}
        )
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(10)

        def predict(path: Path) -> str:
            with learn.no_bar():
                return learn.predict(path)[0]

        return predict
    raise ValueError(f"unknown system {system!r}")


def measure(args: argparse.Namespace) -> dict:
    """One system, in this process."""
    import os

    os.environ["FEWTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="fewtune-systems-cache-")  # cold: empty
    dataset, support, labels, names, queries = task(args)
    state: dict = {}
    seconds = []
    for _ in range(2):  # cold, then warm
        started = time.perf_counter()
        predict = build(args.system, support, labels, names, dataset, args.weights, state)
        seconds.append(time.perf_counter() - started)
    for path in queries[-3:]:
        predict(path)  # warm-up
    latencies = []
    for path in queries[: min(args.predictions, len(queries) - 3)]:  # images never seen: no cache hit
        started = time.perf_counter()
        predict(path)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {
        "system": args.system,
        "cold_s": round(seconds[0], 2),
        "warm_s": round(seconds[1], 3),
        "predict_p50_ms": round(1000 * statistics.median(latencies), 1),
        "predict_p95_ms": round(
            1000 * latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))], 1
        ),
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> int:
    """This process's own peak RSS. Not ``getrusage``'s ru_maxrss: on Linux that keeps the high-water
    mark of the parent's memory from before ``exec``, so every child would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # not Linux


def extraction(args: argparse.Namespace) -> dict:
    """Images per second: fewtune's files -> embeddings against timm's forward on ready tensors."""
    import torch

    import fewtune
    from fewtune.data.images import load
    from fewtune.features.embedding import build_transform, embed_files

    dataset = fewtune.load_dataset(args.data)
    paths = dataset.paths[:: max(1, len(dataset.paths) // args.extraction_images)][: args.extraction_images]
    backbone = fewtune.create_backbone()
    transform = build_transform(backbone.preprocessing)
    tensors = torch.stack([transform(load(p)) for p in paths])
    timm_model = (
        __import__("copy").deepcopy(backbone.model).to(memory_format=torch.contiguous_format)
    )  # timm's default layout

    def timm_forward() -> None:
        with torch.inference_mode():
            for s in range(0, len(tensors), 32):
                timm_model.forward_head(timm_model.forward_features(tensors[s : s + 32]), pre_logits=True)

    def ours() -> None:
        embed_files(backbone, paths, cache=False, batch_size=32)

    timings: dict[str, list[float]] = {"timm": [], "fewtune": []}
    for _ in range(2):  # interleaved: both see the same machine state
        for name, run in (("timm", timm_forward), ("fewtune", ours)):
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    return {
        "images": len(paths),
        "timm_forward_images_per_s": round(len(paths) / min(timings["timm"]), 1),
        "fewtune_files_to_embeddings_images_per_s": round(len(paths) / min(timings["fewtune"]), 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.system:
        print(json.dumps(measure(args)))
        return
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sys.path.insert(0, str(Path(__file__).parent))
    from peers import timm_weights_file

    import fewtune

    weights = timm_weights_file(fewtune.create_backbone(), Path(tempfile.mkdtemp(prefix="fewtune-systems-")))
    result = {
        "data": args.data.name,
        "task": f"5-way 5-shot, episode seed {args.seed}",
        "extraction": extraction(args),
        "systems": [],
    }
    print(json.dumps(result["extraction"]), flush=True)
    for system in [s for s in SYSTEMS if s not in skip]:
        command = [
            sys.executable,
            __file__,
            "--data",
            str(args.data),
            "--seed",
            str(args.seed),
            "--predictions",
            str(args.predictions),
            "--weights",
            str(weights),
            "--system",
            system,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{system} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        result["systems"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "| system | 5×5 classifier, cold (s) | warm (s) | predict one image p50 / p95 (ms) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["systems"]:
        lines.append(
            f"| {r['system']} | {r['cold_s']:.2f} | {r['warm_s']:.3f} | {r['predict_p50_ms']:.0f} / "
            f"{r['predict_p95_ms']:.0f} | {r['peak_rss_mb']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
