"""A timm network's body as stages: which to open, their learning rates, where the frozen part ends.

:func:`layer_groups` splits a timm network into its stages (timm's own grouping, as used for
layer-wise learning-rate decay), :func:`unfreeze` opens the top ``N`` of them, :func:`param_groups`
gives each open stage its learning rate (the head highest, ``layer_decay`` per stage below), and
:class:`SplitBody` runs the frozen bottom once per view and only the open top in the loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fewtune.strategies.finetune.config import FinetuneConfig


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
    network: Any = model  # a timm network: nn.Module does not declare its group_matcher
    grouped = group_parameters(model, network.group_matcher(coarse=True))
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


class SplitBody:
    """``features(x) = top(bottom(x))`` where ``bottom`` holds no trainable parameter, so its output
    can be computed once per view. Falls back to an empty bottom for networks whose forward pass it
    does not know how to split (then every step runs the whole network)."""

    def __init__(self, model: nn.Module):
        self.model: Any = model  # a timm network: its parts are looked up by name
        self.first_open: int | None = None
        blocks = getattr(model, "blocks", None)
        known = all(hasattr(model, a) for a in ("conv_stem", "bn1", "conv_head", "bn2"))
        if known and isinstance(blocks, nn.Sequential):
            open_stages = [
                i for i, stage in enumerate(blocks) if any(p.requires_grad for p in stage.parameters())
            ]
            stem = (model.get_submodule("conv_stem"), model.get_submodule("bn1"))
            stem_open = any(p.requires_grad for m in stem for p in m.parameters())
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
