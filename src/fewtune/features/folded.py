"""Embedding through a copy of the network with every BatchNorm folded into its convolution.

In eval mode a BatchNorm is a fixed per-channel affine map, so it can be folded into the weights
and bias of the convolution that feeds it: the same function with one pass over memory fewer per
layer. timm runs the two as separate layers. On this 2-core CPU a single-image forward of
EfficientNet-Lite0 took 18 ms folded against 25 ms as built (interleaved runs), which is what
brings ``predict`` to the speed of the bare network (``bench/predict_latency.py``).

Folding costs a copy of the network and one image's forward through the original to check it
(~100 ms in all, once), so it starts at the second embedding call: a one-image ``fewtune predict``
never pays for it, a server or a long batch soon does. The copy is used only after it gave the
original's answer on a real input, so a layer order this module misreads (a convolution whose
output also goes elsewhere) costs only the speed-up. Fine-tuning trains the network itself,
BatchNorms included: any in-place change to it makes the next call embed with the network as it
is, and the one after fold afresh.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

#: How far folded embeddings may stray from the original's, relative to their largest value:
#: float32 folding moves them by about 1e-6; a wrong fold moves them by order 1.
TOLERANCE = 1e-3


def pre_logits(model: Any, images: torch.Tensor) -> torch.Tensor:
    """A timm network's pooled pre-logits features."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


class FoldedEmbedder:
    """Embeds with ``model``, switching to a checked BatchNorm-folded copy once it has embedded
    twice with the network unchanged."""

    def __init__(self, model: Any):
        self.model = model
        self._tensors = [*model.parameters(), *model.buffers()]
        self._stamp: list[tuple[int, int]] = []
        self._calls = 0  #: embedding calls since the network last changed
        self._folded: Any | None = None
        #: inference tensors (a network built inside inference mode) keep no version to watch
        self._watchable = not any(t.is_inference() for t in self._tensors)

    def __deepcopy__(self, memo: dict) -> FoldedEmbedder:
        # a copy of the backbone gets a copy of the network, not of its folded copy
        return FoldedEmbedder(copy.deepcopy(self.model, memo))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.training or not self._watchable:
            return pre_logits(self.model, images)
        stamp = [(t._version, t.data_ptr()) for t in self._tensors]  # ~50 us for 300 tensors
        if stamp != self._stamp:  # new, or changed in place (an optimiser step, load_state_dict)
            self._stamp, self._calls, self._folded = stamp, 0, None
        self._calls += 1
        if self._calls == 2:
            with torch.inference_mode(False):  # plain tensors: the copy may be deep-copied later
                folded = fold_batchnorm(self.model)
            if folded is None:
                return pre_logits(self.model, images)
            found = pre_logits(folded, images)
            if not _agrees(found[:1], pre_logits(self.model, images[:1])):
                return pre_logits(self.model, images)
            self._folded = folded
            return found
        return pre_logits(self._folded if self._folded is not None else self.model, images)


def fold_batchnorm(model: Any) -> Any | None:
    """A copy of the timm network ``model`` (in eval mode) with each BatchNorm that directly
    follows a convolution folded into it; None when there is none."""
    from timm.layers import BatchNormAct2d, Conv2dSame

    folded = copy.deepcopy(model)
    pairs = [
        (parent, conv, norm)
        for parent in folded.modules()
        for conv, norm in zip(list(parent._modules), list(parent._modules)[1:], strict=False)
        if type(parent._modules[conv]) in (nn.Conv2d, Conv2dSame)
        and type(parent._modules[norm]) in (nn.BatchNorm2d, BatchNormAct2d)
    ]
    if not pairs:
        return None
    with torch.no_grad():
        for parent, conv_name, norm_name in pairs:
            conv, norm = parent._modules[conv_name], parent._modules[norm_name]
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias, requires_grad=False)
            # BatchNormAct2d also applies its dropout (identity in eval) and activation
            after = [norm.drop, norm.act] if isinstance(norm, BatchNormAct2d) else []
            parent._modules[norm_name] = nn.Sequential(*after)
    return folded


def _agrees(found: torch.Tensor, expected: torch.Tensor) -> bool:
    scale = float(expected.abs().max()) + 1e-12
    return bool(found.shape == expected.shape and (found - expected).abs().max() <= TOLERANCE * scale)
