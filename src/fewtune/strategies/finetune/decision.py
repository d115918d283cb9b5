"""Whether tuning the body can pay, decided from the support set before any tuning.

Fine-tuning on five photos of ImageNet-like objects can *lose* accuracy (measured: -7 points at
1 shot on Caltech-101) while it gains 10+ points on handwritten characters. So with
``unfreeze="auto"`` the body is tuned only when frozen features leave room to gain
(:func:`leave_one_out_accuracy` below :data:`HEADROOM`) or the images look unlike ImageNet
(:func:`imagenet_familiarity` below :data:`FAMILIARITY`): :func:`choose_body`. ``auto`` then also
asks held-out evidence (a cross-fitted tune), except for one example per class, for images
far from ImageNet (:data:`FAR_FROM_IMAGENET`) and for look-alike classes (:data:`ALIKE`):
:func:`tune_without_check`. The thresholds are read when a decision is made, so a test or an
experiment can change them here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from fewtune.geometry import between_class_similarity, leave_one_out_similarity
from fewtune.numeric import softmax
from fewtune.strategies.finetune.config import TARGET_STEPS, FinetuneConfig, parse_unfreeze

if TYPE_CHECKING:
    from fewtune.features.backbones import Backbone

#: with 2+ examples per class, the body is tuned when leave-one-out nearest-prototype accuracy on
#: frozen features is below this: above it, on ImageNet-like photos, there is little to gain and
#: the pretrained body to lose.
HEADROOM = 0.95
#: the body is also tuned when the images look unlike ImageNet: the backbone's own ImageNet
#: classifier gives them a mean top-1 probability below this (support images of Caltech-101 5-way
#: tasks: 0.33-0.77; of Omniglot characters: 0.06-0.22). With 1 example per class it is the only
#: signal; at 5 shots, 7 of 20 Omniglot tasks had a perfect-looking leave-one-out score on 25
#: images, and tuning them still gained 5.9 points on their queries.
FAMILIARITY = 0.25
#: stages opened when the body is tuned with ``unfreeze="auto"``: EfficientNet-Lite0's last three
#: block stages with conv_head. On development episodes (Omniglot 5-way 5-shot, seed 1, not the
#: reported ones) top:3 reached 97.0% against 95.3% for top:2, at 27 s against 16 s per task.
AUTO_TOP = 3
#: images this far from ImageNet (mean top-1 probability below it) are tuned by ``auto`` without
#: held-out evidence. With one example in a class there is none to be had. 0.13, not 0.15:
#: development tasks (seed 0, 5-way 1-shot) with familiarity in [0.13, 0.15) lost 14 points a task
#: from tuning on 32-px Caltech photos (3 tasks) while Omniglot's gained 8 (14 tasks), and "auto
#: never more than 0.5 below the best frozen strategy" comes first. With 2+ examples per class the
#: cross-fitted check (a body tuned on half of each class against frozen features on the other
#: half) is no evidence here: frozen features often classify 9 or 10 of the 10 held-out images, a
#: body tuned on 3 images a class cannot do better, and on the 12 Omniglot 5-way 5-shot tasks it
#: kept frozen (seed 0, 50 episodes) tuning gained 9.5 points a task and lost on none
#: (``bench/cross_fit_gate.py``). No 32-px Caltech 5-shot task is this far (200 tasks: 0.14 and up);
#: on theirs, in [0.13, 0.25), the check stays, and rightly kept 12 tasks frozen that tuning would
#: have cost 4.3 points each (8 of them worse).
FAR_FROM_IMAGENET = 0.13
#: ``auto`` also tunes without the cross-fitted check when the classes look this alike (mean
#: between-class cosine similarity of the support, :func:`fewtune.geometry.between_class_similarity`)
#: and the images are unlike ImageNet. Characters do (Omniglot 0.54-0.78), blurry photos do not
#: (32-px Caltech 0.35-0.42) at the same familiarity, [0.13, 0.25); no Caltech-101 5-shot task is
#: that unfamiliar (seeds 0 and 1, 100 tasks each). On look-alike classes the check's 10 held-out
#: images are no evidence either: frozen features split them by a hair, and on the 12 Omniglot
#: 5-way 5-shot development tasks it kept frozen (seed 0, 50 episodes; 8 ties, 4 lost by 1 or 2
#: images) tuning gained +1.2 on the mean: 10 tasks gained, one kept its accuracy, one lost 8 points
#: (``bench/results/cross_fit_gate-omniglot-5x5-middle-seed0.jsonl``).
ALIKE = 0.5


def choose_body(
    config: FinetuneConfig,
    backbone: Backbone,
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    require_gain: bool = False,
) -> tuple[int | None, str]:
    """How many stages to open (0 = none, None = all), and why: the stages worth a
    cross-fitted tune with ``require_gain``, which then has the last word."""
    setting = parse_unfreeze(config.unfreeze)
    if isinstance(setting, int):
        return setting, "set by --unfreeze"
    if setting != "auto":
        return (0 if setting == "none" else None), "set by --unfreeze"
    familiarity = imagenet_familiarity(backbone, features)
    if require_gain and int(np.bincount(labels, minlength=num_classes).min()) < 2:
        if familiarity is not None and familiarity < FAR_FROM_IMAGENET:
            return AUTO_TOP, (
                f"one example per class of images far from ImageNet (top-1 probability {familiarity:.2f} < "
                f"{FAR_FROM_IMAGENET}), where tuning gained on every task measured"
            )
        why = "a class has one example: nothing to hold out to check that tuning pays"
        if familiarity is not None:
            why += (
                f", and the images are not far enough from ImageNet (top-1 probability {familiarity:.2f} >= "
                f"{FAR_FROM_IMAGENET})"
            )
        return 0, why
    if int(np.bincount(labels, minlength=num_classes).min()) >= 2:
        accuracy = leave_one_out_accuracy(features, labels, num_classes)
        if require_gain and familiarity is not None and familiarity >= FAMILIARITY:
            # ImageNet-like photos: on Caltech-101 5-way 5-shot tasks the cross-fitted tune that a
            # leave-one-out score below HEADROOM started cost ~18 s a task and kept the frozen
            # body every time (docs/benchmarks.md, "The default path")
            return 0, (
                f"ImageNet-like images (top-1 probability {familiarity:.2f} >= {FAMILIARITY}): frozen "
                f"features classify {accuracy:.1%} of held-out support images; "
                "--strategy finetune tunes anyway"
            )
        if accuracy < HEADROOM:
            return AUTO_TOP, (
                f"frozen features classify {accuracy:.1%} of held-out support images (< {HEADROOM:.0%})"
            )
        if familiarity is not None and familiarity < FAMILIARITY:
            return AUTO_TOP, (
                f"frozen features classify {accuracy:.1%} of held-out support images, but the images are "
                f"unlike ImageNet (top-1 probability {familiarity:.2f} < {FAMILIARITY}), where tuning gained "
                "on every task measured"
            )
        return 0, (
            f"frozen features already classify {accuracy:.1%} of held-out support images (>= {HEADROOM:.0%})"
        )
    if familiarity is None:
        return 0, (
            "one example per class and no ImageNet classifier to judge the images by: the body stays frozen"
        )
    if familiarity >= FAMILIARITY:
        return 0, (
            f"one example per class of ImageNet-like images (top-1 probability {familiarity:.2f} >= "
            f"{FAMILIARITY})"
        )
    return AUTO_TOP, (
        f"one example per class of images unlike ImageNet (top-1 probability {familiarity:.2f} < "
        f"{FAMILIARITY})"
    )


def tune_without_check(backbone: Backbone, features: np.ndarray, labels: np.ndarray) -> str | None:
    """Why ``auto`` may tune these images without a cross-fitted check (it would only veto tunes
    that pay: see :data:`FAR_FROM_IMAGENET` and :data:`ALIKE`), or None when the check decides."""
    familiarity = imagenet_familiarity(backbone, features)
    if familiarity is None:
        return None
    if familiarity < FAR_FROM_IMAGENET:
        return (
            f"the images are far from ImageNet (top-1 probability {familiarity:.2f} < {FAR_FROM_IMAGENET}), "
            "where tuning gained on every task measured"
        )
    similarity = between_class_similarity(features, labels)
    if familiarity < FAMILIARITY and similarity >= ALIKE:
        return (
            f"the classes look alike (between-class similarity {similarity:.2f} >= {ALIKE}) and unlike "
            f"ImageNet (top-1 probability {familiarity:.2f} < {FAMILIARITY}), where a check on a few "
            "held-out images hid what tuning gained"
        )
    return None


def leave_one_out_accuracy(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Nearest-prototype accuracy of each support example against prototypes built without it."""
    return float((leave_one_out_similarity(features, labels, num_classes).argmax(1) == labels).mean())


def imagenet_familiarity(backbone: Backbone, features: np.ndarray) -> float | None:
    """Mean top-1 probability the backbone's ImageNet classifier gives the images (from their
    pooled features), or None when the network has no classifier. Needs no network build when
    the classifier is remembered (see :meth:`Backbone.imagenet_classifier`)."""
    classifier = backbone.imagenet_classifier()
    if classifier is None or classifier[0].shape[1] != features.shape[1]:
        return None
    weight, bias = classifier
    return float(softmax(np.asarray(features, dtype=np.float32) @ weight.T + bias).max(1).mean())


def estimate_tune_seconds(backbone: Backbone, config: FinetuneConfig, images: int) -> float:
    """Rough seconds for one :func:`~fewtune.strategies.finetune.loop.tune_body` on this machine: a
    timed forward of a small batch, scaled by the views and steps the config implies (each step's
    forward and backward through the open stages counted as two full forwards: on a Caltech and
    an Omniglot task this came within 1.5x of the time taken)."""
    import torch

    from fewtune.strategies.finetune.views import views_per_image

    size = backbone.preprocessing.get("input_size", (3, 224, 224))
    batch = torch.zeros(4, *size).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    backbone.embed(batch)
    per_image = (time.perf_counter() - started) / 4
    views = views_per_image(config, images) * images
    return per_image * (views + 2 * TARGET_STEPS * config.batch_size)
