"""The training loop: the top stages of a body, trained on augmented views through a cosine head.

What makes it safe on five images:
- the network stays in eval mode: BatchNorm running statistics are never updated from a batch of
  a handful of images, only its affine parameters are trained;
- the head starts as the class prototypes (weight imprinting), so step 0 is ``prototype``;
- small body learning rates, warm-up then cosine decay, label smoothing, weight decay on weights only.

What makes it fast on a CPU: the frozen early stages run once per augmented view, not once per
step; only the open stages run forward and backward in the loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fewtune.errors import Interrupted
from fewtune.features.backbones import Backbone
from fewtune.progress import ProgressBar
from fewtune.strategies.finetune import checkpoints
from fewtune.strategies.finetune.config import TARGET_STEPS, FinetuneConfig
from fewtune.strategies.finetune.head import CosineHead, imprint, warmup_cosine
from fewtune.strategies.finetune.stages import SplitBody, freeze, layer_groups, param_groups, unfreeze
from fewtune.strategies.finetune.views import make_views, seeded, view_features, views_per_image


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
    body, hidden, view_labels, head = prepare(
        backbone, pictures, labels, num_classes, config, top, progress=progress
    )
    validated: tuple[torch.Tensor, torch.Tensor] | None = None  # frozen-bottom validation views, labels
    if validation is not None:
        with torch.no_grad():
            val_hidden, _ = make_views(
                backbone, body, validation[0], validation[1], "none", 1, config.batch_size
            )
        validated = (val_hidden, validation[1])

    steps_per_epoch = math.ceil(len(view_labels) / config.batch_size)
    epochs = config.epochs or max(1, round(TARGET_STEPS / steps_per_epoch))
    groups = param_groups(model, head, config)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(epochs * steps_per_epoch))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    first_epoch = 0
    history: list[dict[str, float]] = []
    best: tuple[float, int | None, dict[str, torch.Tensor] | None] = (-1.0, None, None)  # accuracy, epoch
    if validated is not None:  # epoch 0, the untouched body, is a candidate too: tuning must pay
        best = (
            _accuracy(head, body, *validated, config.batch_size),
            0,
            {n: p.detach().clone() for n, p in trainable.items()},
        )
    resumed = None
    if resume and checkpoint is not None and (checkpoint / "state.json").is_file():
        first_epoch, history = checkpoints.load(checkpoint, trainable, head, optimizer, schedule, config)
        resumed = first_epoch

    weights = 1.0 / torch.bincount(view_labels, minlength=num_classes).float()[view_labels]  # class-balanced
    loss_value, accuracy = math.nan, math.nan
    try:
        with (
            ProgressBar("fine-tuning", epochs * steps_per_epoch, enabled=progress) as advance,
            torch.enable_grad(),
        ):
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
                    status = f"loss {np.mean(losses):.3f} acc {correct / seen:.2f} lr {lr_now:.1e}"
                    advance(1, f"epoch {epoch + 1}/{epochs} {status}")
                loss_value, accuracy = float(np.mean(losses)), correct / len(order)
                record: dict[str, float] = {
                    "epoch": epoch + 1,
                    "loss": loss_value,
                    "accuracy": accuracy,
                    "lr": float(schedule.get_last_lr()[0]),
                    "seconds": time.perf_counter() - epoch_started,
                }
                if validated is not None:
                    record["val_accuracy"] = _accuracy(head, body, *validated, config.batch_size)
                    if record["val_accuracy"] > best[0]:
                        best = (
                            record["val_accuracy"],
                            epoch + 1,
                            {n: p.detach().clone() for n, p in trainable.items()},
                        )
                history.append(record)
                if checkpoint is not None:
                    checkpoints.save(
                        checkpoint, trainable, head, optimizer, schedule, config, epoch + 1, history
                    )
                if best[1] is not None and epoch + 1 - best[1] >= config.patience:
                    break
    except KeyboardInterrupt:
        where = (
            f"; the last finished epoch is in {checkpoint}: run again with --resume"
            if checkpoint and history
            else ""
        )
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


def prepare(
    backbone: Backbone,
    pictures: list,
    labels: torch.Tensor,
    num_classes: int,
    config: FinetuneConfig,
    top: int | None,
    *,
    progress: bool = False,
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
    with (
        seeded(config.seed),
        ProgressBar(
            f"fine-tuning: embedding {views} augmented views", 2 * views, enabled=progress
        ) as advance,
    ):
        hidden, view_labels = make_views(
            backbone, body, pictures, labels, config.augment, view_count, config.batch_size, advance
        )
        with torch.no_grad():
            frozen_features = view_features(body, hidden, config.batch_size, advance)
        head = CosineHead(imprint(frozen_features, view_labels, num_classes))
    return body, hidden, view_labels, head


def _accuracy(
    head: CosineHead, body: SplitBody, hidden: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float:
    with torch.no_grad():
        return float((head(view_features(body, hidden, batch_size)).argmax(1) == labels).float().mean())
