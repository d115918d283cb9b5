"""The learning-rate finder: loss against head learning rate, one step at each (``train --lr-find``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fewtune.errors import FewtuneError
from fewtune.features.backbones import Backbone
from fewtune.strategies.finetune.config import FinetuneConfig
from fewtune.strategies.finetune.loop import prepare
from fewtune.strategies.finetune.stages import freeze, param_groups


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
            raise FewtuneError(
                "plotting the learning-rate finder needs matplotlib: pip install 'fewtune[report]'"
            ) from None
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot(self.lrs, self.losses)
        axes.axvline(
            self.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {self.suggestion:.2g}"
        )
        axes.set(
            xscale="log",
            xlabel="head learning rate",
            ylabel="training loss (smoothed)",
            title="learning-rate finder",
        )
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
    backbone = copy.deepcopy(backbone)
    body, hidden, view_labels, head = prepare(backbone, pictures, labels, num_classes, config, top)
    groups = param_groups(backbone.model, head, config)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups])
    ratios = [g["lr"] / config.lr for g in groups]
    generator = torch.Generator().manual_seed(config.seed)
    lrs, losses, smooth = [], [], None
    with torch.enable_grad():
        for step in range(steps):
            lr = start * (end / start) ** (step / (steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            batch = torch.randint(
                len(view_labels), (min(config.batch_size, len(view_labels)),), generator=generator
            )
            loss = F.cross_entropy(
                head(body.top(hidden[batch])), view_labels[batch], label_smoothing=config.label_smoothing
            )
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
    slopes = (
        np.gradient(np.asarray(losses), np.log(np.asarray(lrs))) if len(losses) > 2 else np.zeros(len(losses))
    )
    suggestion = lrs[int(np.argmin(slopes))] if len(losses) > 2 else config.lr
    return LrFind(lrs=lrs, losses=losses, suggestion=float(suggestion))
