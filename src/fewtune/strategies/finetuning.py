"""Fine-tuning a backbone's body on a few images: stages, discriminative learning rates, the loop.

The mechanics behind the ``finetune`` strategy (:mod:`fewtune.strategies.finetune`), usable by
hand: :func:`layer_groups` splits a timm network into its stages (timm's own grouping, as used for
layer-wise learning-rate decay), :func:`unfreeze` opens the top ``N`` of them, :func:`param_groups`
gives each open stage its learning rate (the head highest, ``layer_decay`` per stage below), and
:func:`tune_body` trains them on augmented views of the support images through a cosine head.

What makes it safe on five images (see the issue's measurements in the README):
- the network stays in eval mode: BatchNorm running statistics are never updated from a batch of
  a handful of images, only its affine parameters are trained;
- the head starts as the class prototypes (weight imprinting), so step 0 is ``prototype``;
- small body learning rates, warm-up then cosine decay, label smoothing, weight decay on weights only.

What makes it fast on a CPU: the frozen early stages run once per augmented view, not once per
step; only the open stages run forward and backward in the loop.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewtune.geometry import class_means
from fewtune.data import images
from fewtune.features.backbones import Backbone
from fewtune.errors import FewtuneError
from fewtune.progress import ProgressBar

AUGMENTS = ("none", "light", "strong")
UNFREEZE_HELP = "auto | none | top:N | all"
MAX_VIEWS = 2048  #: cap on augmented views held in memory (as early-stage feature maps)
#: augmented views in all when --views is not given, and optimiser steps when --epochs is not. On
#: development episodes (Omniglot 5-way, seed 1), 160 views / 30 steps matched 256 / 40 in accuracy
#: (5-shot 98.0 vs 98.2 on 8 tasks; 1-shot 86.4 vs 84.1 on 10) at 78% of the time.
TARGET_VIEWS = 160
TARGET_STEPS = 30


@dataclass(frozen=True)
class FinetuneConfig:
    """Every knob of fine-tuning; the defaults need no tuning for 1 to ~50 images per class.

    Attributes:
        unfreeze: ``auto`` (decide from the support set), ``none`` (train the head only, on cached
            features), ``top:N`` (the top N stages of the body too) or ``all``.
        epochs: passes over the augmented views while the body trains; None: about 30 steps.
        head_epochs: full-batch steps of the head on cached features (the "catch up" phase).
        lr: learning rate of the head.
        body_lr: learning rate of the top open stage of the body.
        layer_decay: each stage below the top gets this times the learning rate of the one above.
        weight_decay: AdamW weight decay, on conv and linear weights only (not norms, biases, scale).
        label_smoothing: cross-entropy label smoothing.
        augment: ``none``, ``light`` (random resized crop and a small affine; no flip, so it is safe
            for characters and digits) or ``strong`` (flip and TrivialAugment too).
        views: augmented views per image; None: about ``TARGET_VIEWS`` in all (4 to 32 per image),
            since the frozen early stages, run once per view, cost the most.
        batch_size: views per optimiser step.
        seed: seeds augmentation, sampling and head initialisation.
        val_split: fraction of each class held out for early stopping and best-epoch restore.
        patience: epochs without a better validation accuracy before stopping.
    """

    unfreeze: str = "auto"
    epochs: int | None = None
    head_epochs: int = 100
    lr: float = 1e-2
    body_lr: float = 1e-3
    layer_decay: float = 0.7
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    augment: str = "light"
    views: int | None = None
    batch_size: int = 16
    seed: int = 0
    val_split: float = 0.0
    patience: int = 3

    def __post_init__(self) -> None:
        parse_unfreeze(self.unfreeze)
        checks = [
            ("epochs", self.epochs is None or self.epochs >= 1, "an integer >= 1"),
            ("head-epochs", self.head_epochs >= 0, "an integer >= 0"),
            ("lr", self.lr > 0, "> 0"),
            ("body-lr", self.body_lr > 0, "> 0"),
            ("layer-decay", 0 < self.layer_decay <= 1, "in (0, 1]"),
            ("weight-decay", self.weight_decay >= 0, ">= 0"),
            ("label-smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("augment", self.augment in AUGMENTS, f"one of {', '.join(AUGMENTS)}"),
            ("views", self.views is None or self.views >= 1, "an integer >= 1"),
            ("batch-size", self.batch_size >= 1, "an integer >= 1"),
            ("val-split", 0 <= self.val_split < 1, "in [0, 1)"),
            ("patience", self.patience >= 1, "an integer >= 1"),
        ]
        for flag, ok, expected in checks:
            if not ok:
                raise ValueError(f"--{flag} must be {expected}, got {getattr(self, flag.replace('-', '_'))!r}")


def parse_unfreeze(value: str) -> str | int:
    """``auto``/``none``/``all`` as given; ``top:N`` -> N. Anything else names the flag and the forms."""
    if value in ("auto", "none", "all"):
        return value
    head, _, n = value.partition(":")
    if head == "top" and n.isdigit() and int(n) >= 1:
        return int(n)
    raise ValueError(f"--unfreeze must be {UNFREEZE_HELP} (N >= 1), got {value!r}")


# --- stages -------------------------------------------------------------------------------------


def classifier_prefix(model: nn.Module) -> str:
    """Parameter-name prefix of the network's ImageNet classifier, which fine-tuning never trains."""
    return str(getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")) + "."


def layer_groups(model: nn.Module) -> list[list[str]]:
    """The body's stages, bottom (stem) to top, as lists of parameter names.

    timm's coarse grouping (the one its layer-wise decay uses): for EfficientNet-Lite0 that is the
    stem, one group per block stage, and the last stage together with ``conv_head``/``bn2``.
    """
    from timm.models import group_parameters

    skip = classifier_prefix(model)
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    groups = [[n for n in names if not n.startswith(skip)] for _, names in sorted(grouped.items())]
    return [g for g in groups if g]


def freeze(model: nn.Module) -> None:
    """No parameter of ``model`` is trained."""
    model.requires_grad_(False)


def unfreeze(model: nn.Module, top: int | None = None) -> list[list[str]]:
    """Open the top ``top`` stages for training (all of them when None); returns the open stages,
    top first. The ImageNet classifier stays frozen: fine-tuning uses the pooled features."""
    freeze(model)
    groups = layer_groups(model)
    opened = groups[::-1][: len(groups) if top is None else top]
    parameters = dict(model.named_parameters())
    for names in opened:
        for name in names:
            parameters[name].requires_grad_(True)
    return opened


def param_groups(model: nn.Module, head: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Optimizer groups: the head at ``lr``; the open stages at ``body_lr * layer_decay**depth``
    (depth 0 = top stage). Weight decay goes to conv/linear weights only."""
    parameters = dict(model.named_parameters())
    result = []

    def add(name: str, named: list[tuple[str, nn.Parameter]], lr: float) -> None:
        decay = [p for n, p in named if p.ndim > 1]
        plain = [p for n, p in named if p.ndim <= 1]
        for suffix, params, wd in (("", decay, config.weight_decay), (" (no decay)", plain, 0.0)):
            if params:
                result.append({"name": name + suffix, "params": params, "lr": lr, "weight_decay": wd})

    add("head", list(head.named_parameters()), config.lr)
    groups = layer_groups(model)
    for depth, names in enumerate(reversed(groups)):
        trainable = [(n, parameters[n]) for n in names if parameters[n].requires_grad]
        if trainable:
            add(f"stage {len(groups) - 1 - depth}", trainable, config.body_lr * config.layer_decay**depth)
    for group in result:
        group["initial_lr"] = group["lr"]
    return result


# --- the head -----------------------------------------------------------------------------------


class CosineHead(nn.Module):
    """``scale * cos(feature, weight_c)``: imprinted from class prototypes, a cosine classifier
    scores exactly like nearest-prototype before any training (Qi et al. 2018, "Low-shot
    learning with imprinted weights")."""

    def __init__(self, prototypes: torch.Tensor, scale: float = 10.0):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(prototypes.float(), dim=1).clone())
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T


def imprint(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Unit class means of unit features: the head's starting weights."""
    return class_means(features, labels, num_classes)


def train_head(head: CosineHead, features: torch.Tensor, labels: torch.Tensor, config: FinetuneConfig) -> float:
    """The head's "catch up" phase on cached features, full batch; returns the final loss."""
    if config.head_epochs == 0:
        return math.nan
    optimizer = torch.optim.AdamW(
        [{"params": [head.weight], "weight_decay": config.weight_decay}, {"params": [head.scale], "weight_decay": 0.0}],
        lr=config.lr,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.head_epochs))
    features = features.float()
    with torch.enable_grad():
        for _ in range(config.head_epochs):
            loss = F.cross_entropy(head(features), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return float(loss.detach())


def warmup_cosine(total: int, warmup: float = 0.1) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over the first ``warmup`` of the steps, then cosine to zero."""
    warm = max(1, int(total * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return factor


# --- augmented views ----------------------------------------------------------------------------


def view_transform(preprocessing: dict[str, Any], augment: str) -> Callable:
    """PIL image -> normalised tensor at the backbone's input size, randomly augmented."""
    from torchvision.transforms import v2

    from fewtune.features.embedding import build_transform

    if augment == "none":
        return build_transform(preprocessing)
    size = tuple(preprocessing["input_size"][1:])
    resize = int(max(size) / preprocessing["crop_pct"])
    steps: list[Any] = [v2.PILToTensor(), v2.Resize(resize, antialias=True)]
    if augment == "light":
        steps += [_BorderFillAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1), shear=5),
                  v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18), antialias=True)]  # fmt: skip
    else:
        steps += [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(), v2.TrivialAugmentWide()]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocessing["mean"], preprocessing["std"])]
    return v2.Compose(steps)


class _BorderFillAffine(torch.nn.Module):
    """RandomAffine that fills the uncovered corners with the image's own border colour, so a
    character on white paper doesn't gain black triangles the real images never have."""

    def __init__(self, **kwargs: Any):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
        fill = border.float().median(dim=1).values.round().tolist()
        return v2.RandomAffine(**self.kwargs, fill=fill)(image)


# --- the body, split where the frozen part ends -------------------------------------------------


class SplitBody:
    """``features(x) = top(bottom(x))`` where ``bottom`` holds no trainable parameter, so its output
    can be computed once per view. Falls back to an empty bottom for networks whose forward pass it
    does not know how to split (then every step runs the whole network)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.first_open = None
        blocks = getattr(model, "blocks", None)
        known = all(hasattr(model, a) for a in ("conv_stem", "bn1", "conv_head", "bn2")) and isinstance(blocks, nn.Sequential)
        if known:
            open_stages = [i for i, stage in enumerate(blocks) if any(p.requires_grad for p in stage.parameters())]
            stem_open = any(p.requires_grad for m in (model.conv_stem, model.bn1) for p in m.parameters())
            self.first_open = len(blocks) if not open_stages else open_stages[0]
            if stem_open:
                self.first_open = None

    def bottom(self, images: torch.Tensor) -> torch.Tensor:
        if self.first_open is None:
            return images
        m = self.model
        return m.blocks[: self.first_open](m.bn1(m.conv_stem(images)))

    def top(self, hidden: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.first_open is None:
            return m.forward_head(m.forward_features(hidden), pre_logits=True)
        x = m.bn2(m.conv_head(m.blocks[self.first_open :](hidden)))
        return m.forward_head(x, pre_logits=True)


# --- the loop -----------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What :func:`tune_body` did, for the classifier's fit report."""

    open_stages: int
    epochs: int
    steps: int
    views: int
    seconds: float
    final_loss: float
    train_accuracy: float
    best_epoch: int | None = None
    val_accuracy: float | None = None
    resumed_from_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def rounded(row: dict[str, Any]) -> dict[str, Any]:
            return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}

        out = rounded(asdict(self))
        out["history"] = [rounded(row) for row in self.history[-50:]]
        return out


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during fine-tuning; the message says where the last finished epoch was saved."""


def load_pictures(paths: Sequence[Path]) -> list:
    """Decode every support image once (they are few): each epoch's views come from these."""
    return [images.load(p) for p in paths]


def tune_body(
    backbone: Backbone,
    pictures: list,
    labels: torch.Tensor,
    num_classes: int,
    config: FinetuneConfig,
    top: int | None,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = False,
    validation: tuple[list, torch.Tensor] | None = None,
) -> TuneResult:
    """Train the top ``top`` stages (all when None) of ``backbone.model`` in place, with a cosine head
    imprinted from the current features. Callers pass a copy they own (see ``Finetune.tune``).

    Args:
        pictures: decoded support images (PIL); labels: (n,) in ``[0, num_classes)``.
        checkpoint: folder for a checkpoint after every epoch (safetensors + JSON); with
            ``resume``, training continues after the epoch saved there.
        validation: held-out (pictures, labels): the best epoch on them is kept, and training
            stops after ``config.patience`` epochs without improvement.
    """
    started = time.perf_counter()
    model = backbone.model
    body, hidden, view_labels, head = _prepare(backbone, pictures, labels, num_classes, config, top, progress=progress)
    val_hidden = None
    if validation is not None:
        with torch.no_grad():
            val_hidden, _ = _make_views(backbone, body, validation[0], validation[1], "none", 1, config.batch_size)

    steps_per_epoch = math.ceil(len(view_labels) / config.batch_size)
    epochs = config.epochs or max(1, round(TARGET_STEPS / steps_per_epoch))
    groups = param_groups(model, head, config)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(epochs * steps_per_epoch))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    first_epoch, history, best = 0, [], (-1.0, None, None)
    if val_hidden is not None:  # epoch 0, the untouched body, is a candidate too: tuning must pay
        best = (_accuracy(head, body, val_hidden, validation[1], config.batch_size), 0, {n: p.detach().clone() for n, p in trainable.items()})
    resumed = None
    if resume and checkpoint is not None and (checkpoint / "state.json").is_file():
        first_epoch, history = _load_checkpoint(checkpoint, trainable, head, optimizer, schedule, config)
        resumed = first_epoch

    weights = 1.0 / torch.bincount(view_labels, minlength=num_classes).float()[view_labels]  # class-balanced
    loss_value, accuracy = math.nan, math.nan
    try:
        with ProgressBar("fine-tuning", epochs * steps_per_epoch, enabled=progress) as advance, torch.enable_grad():
            advance(first_epoch * steps_per_epoch)
            for epoch in range(first_epoch, epochs):
                generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
                order = torch.multinomial(weights, len(view_labels), replacement=True, generator=generator)
                losses, correct, seen, epoch_started = [], 0, 0, time.perf_counter()
                for step in range(steps_per_epoch):
                    batch = order[step * config.batch_size : (step + 1) * config.batch_size]
                    logits = head(body.top(hidden[batch]))
                    loss = F.cross_entropy(logits, view_labels[batch], label_smoothing=config.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    losses.append(float(loss.detach()))
                    correct += int((logits.argmax(1) == view_labels[batch]).sum())
                    seen += len(batch)
                    lr_now = schedule.get_last_lr()[0]
                    advance(1, f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.3f} acc {correct / seen:.2f} lr {lr_now:.1e}")
                loss_value, accuracy = float(np.mean(losses)), correct / len(order)
                record = {"epoch": epoch + 1, "loss": loss_value, "accuracy": accuracy, "lr": schedule.get_last_lr()[0],
                          "seconds": time.perf_counter() - epoch_started}  # fmt: skip
                if val_hidden is not None:
                    record["val_accuracy"] = _accuracy(head, body, val_hidden, validation[1], config.batch_size)
                    if record["val_accuracy"] > best[0]:
                        best = (record["val_accuracy"], epoch + 1, {n: p.detach().clone() for n, p in trainable.items()})
                history.append(record)
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, trainable, head, optimizer, schedule, config, epoch + 1, history)
                if best[1] is not None and epoch + 1 - best[1] >= config.patience:
                    break
    except KeyboardInterrupt:
        where = f"; the last finished epoch is in {checkpoint}: run again with --resume" if checkpoint and history else ""
        raise Interrupted(f"fine-tuning interrupted at epoch {len(history) + 1} of {epochs}{where}") from None
    finally:
        freeze(model)
        model.eval()

    if best[2] is not None:
        with torch.no_grad():
            for name, value in best[2].items():
                trainable[name].copy_(value)
    return TuneResult(
        open_stages=len(layer_groups(model)) if top is None else top,
        epochs=len(history),
        steps=len(history) * steps_per_epoch,
        views=len(view_labels),
        seconds=time.perf_counter() - started,
        final_loss=loss_value,
        train_accuracy=accuracy,
        best_epoch=best[1],
        val_accuracy=best[0] if best[1] is not None else None,
        resumed_from_epoch=resumed,
        history=history,
    )


def _prepare(
    backbone: Backbone, pictures: list, labels: torch.Tensor, num_classes: int, config: FinetuneConfig, top: int | None,
    *, progress: bool = False,
) -> tuple[SplitBody, torch.Tensor, torch.Tensor, CosineHead]:
    """Open the stages, run the frozen bottom on every augmented view, imprint the head.

    This is most of the wait before the first step (10-30 s on a 2-core CPU: every view goes
    through the whole network twice, bottom then top), so it has its own bar.
    """
    backbone.model.eval()  # BatchNorm keeps its running statistics: a batch of 5 images would ruin them
    unfreeze(backbone.model, top)
    body = SplitBody(backbone.model)
    view_count = views_per_image(config, len(pictures))
    views = view_count * len(pictures)
    with _seeded(config.seed), ProgressBar(f"fine-tuning: embedding {views} augmented views", 2 * views, enabled=progress) as advance:
        hidden, view_labels = _make_views(backbone, body, pictures, labels, config.augment, view_count, config.batch_size, advance)
        with torch.no_grad():
            frozen_features = _features(body, hidden, config.batch_size, advance)
        head = CosineHead(imprint(frozen_features, view_labels, num_classes))
    return body, hidden, view_labels, head


@dataclass
class LrFind:
    """A learning-rate range test: the loss after one step at each (head) learning rate."""

    lrs: list[float]
    losses: list[float]
    suggestion: float

    def plot(self, path: Path) -> Path:
        """Save loss against learning rate as a PNG (needs matplotlib: ``pip install fewtune[report]``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise FewtuneError("plotting the learning-rate finder needs matplotlib: pip install 'fewtune[report]'") from None
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot(self.lrs, self.losses)
        axes.axvline(self.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {self.suggestion:.2g}")
        axes.set(xscale="log", xlabel="head learning rate", ylabel="training loss (smoothed)", title="learning-rate finder")
        axes.legend()
        figure.tight_layout()
        path = Path(path)
        staging = path.with_name(f".{path.name}.partial.png")
        figure.savefig(staging, dpi=100)
        plt.close(figure)
        staging.replace(path)
        return path


def lr_find(
    backbone: Backbone,
    pictures: list,
    labels: torch.Tensor,
    num_classes: int,
    config: FinetuneConfig,
    top: int | None,
    *,
    start: float = 1e-5,
    end: float = 10.0,
    steps: int = 60,
) -> LrFind:
    """Learning-rate range test (Smith 2017, as fastai's ``lr_find``) on a copy of the backbone:
    one step per learning rate, growing exponentially, until the loss explodes. Body stages keep
    their ratios to the head (``body_lr / lr``, ``layer_decay``). Suggests the rate of steepest
    descent of the smoothed loss."""
    import copy

    backbone = copy.deepcopy(backbone)
    body, hidden, view_labels, head = _prepare(backbone, pictures, labels, num_classes, config, top)
    groups = param_groups(backbone.model, head, config)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups])
    ratios = [g["lr"] / config.lr for g in groups]
    generator = torch.Generator().manual_seed(config.seed)
    lrs, losses, smooth = [], [], None
    with torch.enable_grad():
        for step in range(steps):
            lr = start * (end / start) ** (step / (steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            batch = torch.randint(len(view_labels), (min(config.batch_size, len(view_labels)),), generator=generator)
            loss = F.cross_entropy(head(body.top(hidden[batch])), view_labels[batch], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            smooth = value if smooth is None else 0.7 * smooth + 0.3 * value
            lrs.append(lr)
            losses.append(smooth)
            if not math.isfinite(value) or smooth > 4 * min(losses):
                break
    freeze(backbone.model)
    slopes = np.gradient(np.asarray(losses), np.log(np.asarray(lrs))) if len(losses) > 2 else np.zeros(len(losses))
    suggestion = lrs[int(np.argmin(slopes))] if len(losses) > 2 else config.lr
    return LrFind(lrs=lrs, losses=losses, suggestion=float(suggestion))


def views_per_image(config: FinetuneConfig, images: int) -> int:
    """Augmented views of each image: ``config.views``, or about ``TARGET_VIEWS`` in all."""
    if config.augment == "none":
        return 1  # every view would be the same
    wanted = config.views or min(32, max(4, TARGET_VIEWS // max(1, images)))
    return max(1, min(wanted, MAX_VIEWS // max(1, images)))


def _make_views(
    backbone: Backbone, body: SplitBody, pictures: list, labels: torch.Tensor, augment: str, count: int, batch_size: int,
    advance: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-bottom outputs of ``count`` augmented views of each picture, and their labels."""
    transform = view_transform(backbone.preprocessing, augment)
    items = [(i, v) for i in range(len(pictures)) for v in range(count)]
    chunks = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            batch = torch.stack([transform(pictures[i]) for i, _ in items[s : s + batch_size]])
            chunks.append(body.bottom(batch))
            if advance:
                advance(len(batch))
    return torch.cat(chunks), labels[torch.tensor([i for i, _ in items])]


def _accuracy(head: CosineHead, body: SplitBody, hidden: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    with torch.no_grad():
        return float((head(_features(body, hidden, batch_size)).argmax(1) == labels).float().mean())


def _features(body: SplitBody, hidden: torch.Tensor, batch_size: int, advance: Callable[[int], None] | None = None) -> torch.Tensor:
    chunks = []
    for s in range(0, len(hidden), batch_size):
        chunks.append(body.top(hidden[s : s + batch_size]))
        if advance:
            advance(len(chunks[-1]))
    return torch.cat(chunks)


class _seeded:
    """Seed python, numpy and torch for a block (torchvision draws from all of them), then restore."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        self.states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        random.setstate(self.states[0])
        np.random.set_state(self.states[1])
        torch.random.set_rng_state(self.states[2])


# --- checkpoints: safetensors + JSON, written atomically ----------------------------------------


def _save_checkpoint(
    folder: Path, trainable: dict[str, torch.Tensor], head: CosineHead, optimizer: torch.optim.Optimizer,
    schedule: Any, config: FinetuneConfig, epoch: int, history: list[dict[str, float]],
) -> None:  # fmt: skip
    from safetensors.torch import save_file

    tensors = {f"body.{n}": p.detach().contiguous() for n, p in trainable.items()}
    tensors.update({f"head.{n}": p.detach().contiguous() for n, p in head.state_dict().items()})
    state = optimizer.state_dict()
    for index, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).contiguous()
    meta = {"epoch": epoch, "history": history, "config": asdict(config), "schedule": schedule.state_dict()["last_epoch"]}
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(tensors, staging / "tensors.safetensors")
    (staging / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    retired = folder.with_name(folder.name + f".{os.getpid()}.old")
    if folder.exists():
        folder.rename(retired)
    staging.rename(folder)
    shutil.rmtree(retired, ignore_errors=True)


def _load_checkpoint(
    folder: Path, trainable: dict[str, torch.Tensor], head: CosineHead, optimizer: torch.optim.Optimizer,
    schedule: Any, config: FinetuneConfig,
) -> tuple[int, list[dict[str, float]]]:  # fmt: skip
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(folder / "tensors.safetensors")
    except (OSError, ValueError, SafetensorError) as exc:
        raise FewtuneError(f"{folder}: damaged checkpoint ({exc}); delete it and train without --resume") from None
    if meta.get("config") != asdict(config):
        changed = sorted(k for k, v in asdict(config).items() if meta.get("config", {}).get(k) != v)
        raise FewtuneError(
            f"{folder}: the checkpoint was made with other settings ({', '.join(changed)}); "
            "resume with the same flags, or delete it to start again"
        )
    body = {n[5:]: t for n, t in tensors.items() if n.startswith("body.")}
    if set(body) != set(trainable):
        raise FewtuneError(f"{folder}: the checkpoint trains other layers than this model; delete it and train again")
    with torch.no_grad():
        for name, value in body.items():
            trainable[name].copy_(value)
        head.load_state_dict({n[5:]: t for n, t in tensors.items() if n.startswith("head.")})
    state = optimizer.state_dict()
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            slots.setdefault(int(index), {})[key] = value
    state["state"] = slots
    optimizer.load_state_dict(state)
    schedule.last_epoch = int(meta["schedule"])
    schedule._last_lr = [g["lr"] for g in optimizer.param_groups]  # noqa: SLF001 - as LRScheduler.step leaves it
    factors = [fn(schedule.last_epoch) for fn in schedule.lr_lambdas]
    for group, base, factor in zip(optimizer.param_groups, schedule.base_lrs, factors):
        group["lr"] = base * factor
    return int(meta["epoch"]), list(meta["history"])
