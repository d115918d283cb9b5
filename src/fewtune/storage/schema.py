"""The one schema of a saved classifier's ``config.json``, checked whole before anything uses it.

A config is data from disk, possibly edited by hand or by someone hostile: ``input_size =
[3, 60000, 60000]`` would allocate gigabytes per image, ``temperature = -1`` inverts every
prediction, ``classes`` as a string would yield one class per letter. So every key the
classifier *uses* is checked for type, range and (with :func:`check_tensors`) agreement with the
tensor files, and every number must be finite (the open-set threshold may be ``Infinity``:
"never reject"). The descriptive records (``strategy.fit``, ``calibration`` besides the
temperature, ``open_set.calibration``, ``training``) only have to be JSON objects; a NaN or
infinity in them (older fine-tuning reports wrote NaN for "not measured") is read as ``null``.
Each problem is one :class:`FewtuneError` naming the key, e.g. ``config.json: classes[2]: ...``.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeGuard

import numpy as np

from fewtune.errors import FewtuneError

FORMAT = "fewtune-classifier"
FORMAT_VERSION = 2  # 2: body.safetensors for fine-tuned backbones
SIDE = (32, 1024)  # input pixels per side; the packaged backbones use 160-260
MAX_CLASSES = 100_000
MAX_NAME = 1_000
PREPROCESSING = {"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"}
INTERPOLATIONS = {"nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"}
CROP_MODES = {"center", "squash", "border"}
DESCRIPTIVE = (
    "strategy.fit",
    "strategy.hyperparameters.tuning",
    "calibration.",
    "open_set.calibration",
    "training",
)
SHA256 = re.compile(r"[0-9a-f]{64}")


class _Bad(Exception):
    """A problem at ``key``; turned into one FewtuneError line by :func:`validate_config`."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")


def validate_config(config: Any, where: str = "config.json") -> dict[str, Any]:
    """Check ``config`` against the schema; returns it with non-finite descriptive numbers as None.

    Raises:
        FewtuneError: ``{where}: {key}: {problem}; ...``, naming the first bad key.
    """
    try:
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise _Bad("format", f"is not {FORMAT!r}: not a fewtune classifier config")
        version = config.get("format_version")
        if type(version) is not int or version < 1:
            raise _Bad("format_version", f"expected a whole number >= 1, got {version!r}")
        if version > FORMAT_VERSION:
            return config  # the caller says "newer than this fewtune reads"
        config = _finite(config, "")
        _check(config)
    except _Bad as exc:
        raise FewtuneError(
            f"{where}: {exc}; the classifier is damaged or was edited by hand, train it again"
        ) from None
    return config


def _check(config: dict[str, Any]) -> None:
    _kind(config, "fewtune_version", str)
    classes = _kind(config, "classes", list)
    if not 1 <= len(classes) <= MAX_CLASSES:
        raise _Bad("classes", f"expected 1 to {MAX_CLASSES:,} class names, got {len(classes)}")
    for i, name in enumerate(classes):
        if not isinstance(name, str) or not name or name != name.strip() or len(name) > MAX_NAME:
            raise _Bad(
                f"classes[{i}]", f"expected a non-empty name without surrounding spaces, got {name!r:.80}"
            )
        if not name.isprintable():
            raise _Bad(
                f"classes[{i}]", f"expected a name without newlines or control characters, got {name!r:.80}"
            )
    if len(set(classes)) != len(classes):
        raise _Bad("classes", "names are not distinct")

    backbone = _kind(config, "backbone", dict)
    for key in ("name", "timm_name", "weights_source"):
        _text(backbone, key, f"backbone.{key}")
    for key in ("weights_sha256", "tuned_sha256"):  # tuned_sha256: format 2, null unless fine-tuned
        value = backbone.get(key)
        if not (value is None and key == "tuned_sha256") and not (
            isinstance(value, str) and SHA256.fullmatch(value)
        ):
            raise _Bad(f"backbone.{key}", f"expected a sha256 of 64 hex digits, got {value!r:.80}")
    _number(backbone, "embedding_dim", "backbone.embedding_dim", 1, 65_536, whole=True)

    pre = _kind(config, "preprocessing", dict)
    if unknown := sorted(set(pre) - PREPROCESSING):
        raise _Bad(
            f"preprocessing.{_name(unknown[0])}",
            f"unknown setting; expected only {', '.join(sorted(PREPROCESSING))}",
        )
    size = pre.get("input_size")
    if not (
        isinstance(size, list)
        and len(size) == 3
        and size[0] == 3
        and all(type(s) is int and SIDE[0] <= s <= SIDE[1] for s in size[1:])
    ):
        raise _Bad(
            "preprocessing.input_size",
            f"expected [3, height, width] with sides {SIDE[0]}-{SIDE[1]}, got {size!r:.80}",
        )
    if not isinstance(pre.get("interpolation"), str) or pre["interpolation"] not in INTERPOLATIONS:
        raise _Bad("preprocessing.interpolation", f"expected one of {', '.join(sorted(INTERPOLATIONS))}")
    if (
        not isinstance(pre.get("crop_mode", "center"), str)
        or pre.get("crop_mode", "center") not in CROP_MODES
    ):
        raise _Bad("preprocessing.crop_mode", f"expected one of {', '.join(sorted(CROP_MODES))}")
    _number(pre, "crop_pct", "preprocessing.crop_pct", 0.05, 1.0)
    for key, low in (("mean", -10.0), ("std", 1e-6)):
        values = pre.get(key)
        if not (
            isinstance(values, list)
            and len(values) == 3
            and all(_is_number(v) and low <= v <= 10 for v in values)
        ):
            raise _Bad(f"preprocessing.{key}", f"expected 3 numbers in [{low:g}, 10], got {values!r:.80}")

    strategy = _kind(config, "strategy", dict)
    _text(strategy, "name", "strategy.name")
    _kind(strategy, "hyperparameters", dict, "strategy.hyperparameters")
    _kind(strategy, "fit", dict, "strategy.fit", optional=True)

    calibration = _kind(config, "calibration", dict)
    _number(calibration, "temperature", "calibration.temperature", 1e-6, 1e6)

    open_set = _kind(config, "open_set", dict)
    if set(open_set) != {"enabled", "threshold", "unknown_label", "calibration"}:
        raise _Bad(
            "open_set",
            "expected the keys enabled, threshold, unknown_label, calibration; got "
            f"{', '.join(map(str, open_set))}",
        )
    _kind(open_set, "enabled", bool, "open_set.enabled")
    threshold = open_set["threshold"]
    if not _is_number(threshold) or threshold < 0:
        raise _Bad("open_set.threshold", f"expected a number >= 0 or Infinity, got {threshold!r:.80}")
    label = _text(open_set, "unknown_label", "open_set.unknown_label")
    if label in classes:
        raise _Bad("open_set.unknown_label", f"{label!r} is also a class name")
    _kind(open_set, "calibration", dict, "open_set.calibration")

    training = _kind(config, "training", dict, optional=True) or {}
    per_class = _kind(training, "per_class", dict, "training.per_class", optional=True) or {}
    for name, count in per_class.items():
        if type(count) is not int or count < 0:
            raise _Bad(f"training.per_class.{name}", f"expected a count >= 0, got {count!r:.80}")


def check_tensors(
    config: dict[str, Any], features: np.ndarray, labels: np.ndarray, state: dict[str, np.ndarray]
) -> None:
    """The tensor files agree with the config: one row of support per label, labels within the
    classes, every class present, every value finite.

    Raises:
        FewtuneError: naming the file and the disagreement.
    """
    classes, dim = len(config["classes"]), config["backbone"]["embedding_dim"]
    if (
        features.dtype not in (np.float32, np.float16, np.float64)
        or features.ndim != 2
        or features.shape[1] != dim
    ):
        raise FewtuneError(
            f"support.safetensors: features are {features.dtype} {tuple(features.shape)}, expected (n, "
            f"{dim}) floats; train the classifier again"
        )
    if labels.dtype not in (np.int64, np.int32) or labels.shape != (len(features),):
        raise FewtuneError(
            f"support.safetensors: labels are {labels.dtype} {tuple(labels.shape)}, expected "
            f"({len(features)},) integers; train the classifier again"
        )
    if (
        len(labels) == 0
        or int(labels.min()) < 0
        or int(labels.max()) >= classes
        or len(np.unique(labels)) != classes
    ):
        raise FewtuneError(
            f"support.safetensors: labels do not match the {classes} classes of config.json (each needs an "
            "example, "
            f"indices 0-{classes - 1}); the classifier is damaged, train it again"
        )
    for key, tensor in state.items():  # every strategy keeps vectors and (rows, dim) matrices
        if tensor.ndim not in (1, 2) or (tensor.ndim == 2 and tensor.shape[1] != dim):
            raise FewtuneError(
                f"strategy.safetensors: {key} is {tuple(tensor.shape)}, expected a vector or (rows, {dim}); "
                "train the classifier again"
            )
    for name, tensor in [
        ("support.safetensors features", features),
        *((f"strategy.safetensors {k}", v) for k, v in state.items()),
    ]:
        if np.issubdtype(tensor.dtype, np.floating) and not bool(np.isfinite(tensor).all()):
            raise FewtuneError(
                f"{name}: holds NaN or infinite values; the classifier is damaged, train it again"
            )


def _finite(value: Any, key: str) -> Any:
    """``value`` with NaN/infinity checked: an error in used keys, None in descriptive records."""
    if isinstance(value, float) and not math.isfinite(value):
        if key == "open_set.threshold" and value == math.inf:
            return value
        if key.startswith(DESCRIPTIVE) and key != "calibration.temperature":
            return None
        raise _Bad(key, f"is {value}; every number must be finite")
    if isinstance(value, dict):
        return {k: _finite(v, f"{key}.{_name(k)}" if key else _name(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _kind(
    parent: dict[str, Any], key: str, kind: type, name: str | None = None, optional: bool = False
) -> Any:
    value = parent.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Bad(
            name or key,
            f"expected {'a JSON ' + _JSON[kind] if kind in _JSON else kind.__name__}, got {_describe(value)}",
        )
    return value


def _text(parent: dict[str, Any], key: str, name: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise _Bad(name, f"expected a non-empty string, got {_describe(value)}")
    return value


def _number(
    parent: dict[str, Any], key: str, name: str, low: float, high: float, whole: bool = False
) -> float:
    value = parent.get(key)
    if not _is_number(value) or (whole and type(value) is not int) or not low <= value <= high:
        raise _Bad(
            name,
            f"expected a {'whole ' if whole else ''}number in [{low:g}, {high:g}], got {_describe(value)}",
        )
    return value


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _name(key: Any) -> str:
    """A key as it can be printed on one line: a hand-edited config may hold any string."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def _describe(value: Any) -> str:
    return "nothing (missing)" if value is None else f"{type(value).__name__} {value!r:.60}"


_JSON = {dict: "object", list: "array", str: "string", bool: "true/false"}
