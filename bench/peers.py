"""fewtune against the tools people use today, on the same frozen features and the same episodes.

Frozen-feature peers (this file, so far): easyfsl's PrototypicalNetworks, SimpleShot, and the
transductive BD-CSPN, TIM and PT-MAP (all with ``feature_normalization=2``, their documented
defaults otherwise), and scikit-learn's LogisticRegression on L2-normalised features (defaults,
``max_iter=1000`` so it converges). Episodes come from ``fewtune benchmark``'s sampler with the
same seed (or from ``--episodes-file``) and are written next to the results, so any other tool
can be run on them. Fine-tuning methods, fewtune ``finetune`` and fastai's ``fine_tune`` (see
:func:`fastai_accuracy`), run on the first ``--finetune-episodes`` episodes of each setting, the
same ones for both. Then the speed and memory rows of every system (``bench/systems.py``).

    pip install -e ".[bench]"
    python bench/peers.py --data ../shared/data/caltech101 ../shared/data/omniglot --episodes 300 --seed 1

(seed 1: fewtune's transductive variants were chosen on seed-0 episodes.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

import fewtune
from fewtune.evaluate.benchmark import Images, episode_accuracy
from fewtune.evaluate.episodes import mean_ci95
from fewtune.evaluate.settings import load_episodes, sample_settings, save_episodes
from fewtune.features.embedding import embed_files
from fewtune.geometry import normalize

FEWTUNE = ["prototype", "probe", "auto", "prototype:transductive=true", "prototype:transductive=balanced"]
EASYFSL = ["PrototypicalNetworks", "SimpleShot", "BDCSPN", "TIM", "PTMAP"]
#: the spec a name in FEWTUNE runs: on frozen features ``auto`` chooses among the frozen strategies
#: (its default candidates also hold ``finetune``, which needs the images: "fewtune finetune" below)
FROZEN_SPECS = {"auto": 'auto:candidates=["probe", "prototype"]'}


def easyfsl_accuracy(name: str, features: np.ndarray, labels: list[int], episode) -> float:
    import easyfsl.methods

    support, query = (torch.tensor(y) for y in episode.local_labels(labels))
    model = getattr(easyfsl.methods, name)(nn.Identity(), feature_normalization=2)
    # easyfsl works on torch tensors: the episode's rows of the (NumPy) embeddings, as tensors
    model.process_support_set(torch.from_numpy(features[episode.support]), support)
    with torch.set_grad_enabled(model.is_transductive()):  # TIM / PT-MAP optimise at inference
        scores = model(torch.from_numpy(features[episode.query]))
    return float((scores.argmax(1) == query).float().mean())


def sklearn_accuracy(features: np.ndarray, labels: list[int], episode) -> float:
    from sklearn.linear_model import LogisticRegression

    support, query = episode.local_labels(labels)
    unit = normalize(features)
    model = LogisticRegression(max_iter=1000).fit(unit[episode.support], support)
    return float((model.predict(unit[episode.query]) == np.array(query)).mean())


def timm_weights_file(backbone: fewtune.Backbone, folder: Path) -> Path:
    """fewtune's backbone weights in timm's key layout, for peers that build the model through timm."""
    from safetensors.torch import save_file

    path = folder / f"{backbone.timm_name}.safetensors"
    if not path.exists():
        save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, path)
    return path


def fastai_accuracy(dataset, episode, weights: Path, epochs: int) -> tuple[float, float, float]:
    """fastai's own recipe, as its users write it: ``vision_learner`` on the timm architecture with
    our weights (``pretrained_cfg_overlay``), ``aug_transforms``, then ``fine_tune(epochs)`` with its
    defaults (one frozen epoch, then ``slice(base_lr/100, base_lr)``, one-cycle). Returns accuracy,
    fitting seconds and prediction seconds. Batch size is the support-set size when that is under
    fastai's 64 (its training loader drops incomplete batches, so 64 would train on nothing)."""
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, set_seed, vision_learner

    set_seed(0)
    support, query = episode.local_labels(dataset.labels)
    fnames = [dataset.paths[i] for i in episode.support]
    dls = ImageDataLoaders.from_lists(
        dataset.source,
        fnames,
        [str(y) for y in support],
        valid_pct=0.0,
        seed=0,
        item_tfms=Resize(256),
        batch_tfms=aug_transforms(size=224),
        bs=min(64, len(fnames)),
        num_workers=0,
    )
    learn = vision_learner(
        dls, "tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(weights)}
    )
    started = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs)
    fitted = time.perf_counter()
    with learn.no_bar():
        probabilities, _ = learn.get_preds(
            dl=dls.test_dl([dataset.paths[i] for i in episode.query], num_workers=0)
        )
    predicted = [int(dls.vocab[i]) for i in probabilities.argmax(1).tolist()]
    done = time.perf_counter()
    return float(np.mean(np.array(predicted) == np.array(query))), fitted - started, done - fitted


def transductive(method: str) -> bool:
    """Looks at the unlabelled queries of an episode, which inductive methods do not."""
    return method.split()[-1] in ("BDCSPN", "TIM", "PTMAP") or "transductive=" in method


def require_bench_extra() -> None:
    """Stop at once, saying what to install, when a peer library is missing (not after minutes
    of embedding)."""
    missing = []
    for module in ("easyfsl", "sklearn", "fastai"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # in sys.modules as None: deliberately unimportable
            found = False
        if not found:
            missing.append(module)
    if missing:
        sys.exit(
            f"bench/peers.py compares against {', '.join(missing)}: install them with pip install -e "
            '".[bench]"'
        )


def main() -> None:
    require_bench_extra()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes-file", type=Path, help="run on these episodes (one data folder only)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/peers.json"))
    parser.add_argument(
        "--finetune-episodes",
        type=int,
        default=20,
        help="episodes (the first ones) for the fine-tuning methods",
    )
    parser.add_argument("--fastai-epochs", type=int, default=10, help="fastai fine_tune(EPOCHS)")
    parser.add_argument(
        "--settings", default="5x1,5x5,20x1", help="WAYxSHOT list; 20-way runs on omniglot only"
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated method names to leave out (e.g. 'fastai fine_tune')"
    )
    parser.add_argument(
        "--no-speed", action="store_true", help="leave out the speed and memory rows (bench/systems.py)"
    )
    args = parser.parse_args()
    skip = {m.strip() for m in args.skip.split(",") if m.strip()}
    weights = timm_weights_file(fewtune.create_backbone(), Path(tempfile.mkdtemp(prefix="fewtune-peers-")))

    backbone = fewtune.create_backbone()
    rows = []
    threads = torch.get_num_threads()
    for folder in args.data:
        dataset = fewtune.load_dataset(folder)
        features = embed_files(backbone, dataset.paths, progress=True).features
        if args.episodes_file:
            settings = load_episodes(args.episodes_file, dataset)
        else:
            plan = [tuple(map(int, x.split("x"))) for x in args.settings.split(",")]
            plan = [(w, k) for w, k in plan if w <= 5 or folder.name == "omniglot"]
            settings = [
                s
                for way, shot in plan
                for s in sample_settings(dataset, [way], [shot], args.queries, args.episodes, args.seed)
            ]
            suffix = "" if args.out.stem == "peers" else f"-{args.out.stem}"
            save_episodes(args.out.with_name(f"episodes-{folder.name}{suffix}.json"), dataset, settings)
        for setting in settings:
            methods = [
                (
                    f"fewtune {n}",
                    lambda e, n=n: episode_accuracy(FROZEN_SPECS.get(n, n), features, dataset.labels, e),
                )
                for n in FEWTUNE
            ]
            methods += [
                (f"easyfsl {n}", lambda e, n=n: easyfsl_accuracy(n, features, dataset.labels, e))
                for n in EASYFSL
            ]
            methods += [
                ("sklearn LogisticRegression", lambda e: sklearn_accuracy(features, dataset.labels, e))
            ]
            images = Images(backbone, dataset.paths)
            tuning = [
                (
                    "fewtune finetune",
                    lambda e: episode_accuracy("finetune", features, dataset.labels, e, images),
                )
            ]
            tuning += [
                ("fastai fine_tune", lambda e: fastai_accuracy(dataset, e, weights, args.fastai_epochs))
            ]
            for name, accuracy in [(n, a) for n, a in methods + tuning if n not in skip]:
                fine_tuning = name in dict(tuning)
                episodes = setting.episodes[: args.finetune_episodes] if fine_tuning else setting.episodes
                # tiny per-episode problems: one thread (see run_setting), torch's for easyfsl and
                # NumPy's BLAS for fewtune's frozen strategies; scikit-learn keeps its defaults
                torch.set_num_threads(threads if fine_tuning else 1)
                blas = 1 if name.startswith("fewtune") and not fine_tuning else None
                with threadpool_limits(blas):
                    started = time.perf_counter()
                    results = [accuracy(e) for e in episodes]
                extra = {}
                if isinstance(results[0], tuple):  # (accuracy, fit seconds, predict seconds)
                    extra = {
                        "fit_seconds": round(sum(r[1] for r in results), 1),
                        "predict_seconds": round(sum(r[2] for r in results), 1),
                    }
                    results = [r[0] for r in results]
                mean, ci = mean_ci95(results)
                row = {
                    "dataset": folder.name,
                    "method": name,
                    "transductive": transductive(name),
                    "way": setting.way,
                    "shot": setting.shot,
                    "queries": setting.queries,
                    "episodes": len(episodes),
                    "mean": round(100 * mean, 2),
                    "ci95": round(100 * ci, 2),
                    "seconds": round(time.perf_counter() - started, 1),
                    **extra,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    if not args.no_speed:  # speed rows, on the first data folder, each system in its own process
        import systems

        systems.main(["--data", str(args.data[0]), "--out", str(args.out.with_name("systems.json"))])


def markdown(rows: list[dict]) -> str:
    settings = list(dict.fromkeys((r["dataset"], r["way"], r["shot"]) for r in rows))
    header = "| method | " + " | ".join(f"{d} {w}-way {k}-shot" for d, w, k in settings) + " |"
    lines = [header, "|---|" + "---:|" * len(settings)]
    max_episodes = max(r["episodes"] for r in rows)
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for d, w, k in settings:
            found = [r for r in rows if (r["method"], r["dataset"], r["way"], r["shot"]) == (method, d, w, k)]
            if not found:
                cells.append("–")
                continue
            r = found[0]
            cells.append(
                f"{r['mean']:.2f} ± {r['ci95']:.2f}"
                + (
                    f" ({r['episodes']} ep., {r['seconds'] / r['episodes']:.0f} s/ep.)"
                    if r["episodes"] < max_episodes
                    else ""
                )
            )
        mark = " (transductive)" if rows[[r["method"] for r in rows].index(method)]["transductive"] else ""
        lines.append(f"| {method}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
