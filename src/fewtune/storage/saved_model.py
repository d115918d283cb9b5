"""Saved classifier folders: written so a reader never sees half of one, read back fully checked.

Layout of ``NAME.fewtune/`` (the same in formats 1 and 2)::

    config.json             format version, backbone + weights sha256, preprocessing,
                            strategy + hyperparameters, ordered classes, training summary, save_id
    strategy.safetensors    the strategy's learned tensors
    support.safetensors     support embeddings and labels (to refit or add classes later)
    body.safetensors        the fine-tuned backbone, only when the body was fine-tuned

How a save replaces a folder. The writer holds the model's lock (:mod:`fewtune.storage.locks`), writes
and fsyncs the new folder as a hidden sibling ``.NAME.<uuid>.partial``, then swaps it into place
in one step (:mod:`fewtune.storage.atomic`: ``renameat2`` RENAME_EXCHANGE, or two renames that
:func:`resolve` recovers from). Each save starts by putting back what a killed one retired and
deleting the leftovers of killed saves.

Every save writes a fresh ``save_id`` into config.json and into each tensor file's metadata. A
reader that finds two different ids raced a save, and reads again; loading takes JSON and
safetensors only, so nothing in the folder can run code.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from fewtune._version import __version__
from fewtune.errors import FewtuneError
from fewtune.features.backbones import REGISTRY, Backbone, create_backbone
from fewtune.features.weights import state_sha256
from fewtune.model.classifier import Classifier
from fewtune.model.head import Embeddings, Head
from fewtune.model.openset import OpenSet
from fewtune.storage import atomic as swap
from fewtune.storage.locks import model_lock
from fewtune.storage.schema import FORMAT_VERSION, check_tensors, validate_config
from fewtune.strategies import STRATEGIES, Strategy, create_strategy

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a real config is a few KB; never read a huge file into memory


def _checkpoint(step: str) -> None:
    """Called after each durable step of a save; tests replace it to kill the process there."""


class _Raced(Exception):
    """The folder was replaced by a save while it was being read."""


def save(classifier: Classifier, path: str | Path) -> Path:
    """Write ``classifier`` to ``path`` under its lock; see the module docstring for the steps."""
    path = Path(path)
    config = validate_config(
        json.loads(json.dumps(classifier.config())), f"{path}/config.json"
    )  # never write what can't be read
    with model_lock(path):
        try:
            swap.restore_retired(path)
            if (
                path.is_symlink()
                or path.is_file()
                or (path.is_dir() and not (path / "config.json").is_file() and any(path.iterdir()))
            ):
                raise FewtuneError(
                    f"{path}: exists and is not a fewtune classifier; choose another output path"
                )
            swap.remove_leftovers(path)
            _write(classifier, config, path)
        except OSError as exc:
            raise FewtuneError(
                f"{path}: cannot save the classifier ({exc.strerror or exc}); choose a folder you can "
                "write, with free space"
            ) from None
    return path


def _write(classifier: Classifier, config: dict[str, Any], path: Path) -> None:
    save_id, head = uuid.uuid4().hex, classifier.head
    tensors = {
        "strategy.safetensors": head.strategy.state_dict(),
        "support.safetensors": {"features": head.support.features, "labels": head.labels},
    }
    if classifier.pretrained is not None:  # a tuned body: novelty is measured on these
        tensors["support.safetensors"]["pretrained_features"] = head.support.novelty
    if classifier.backbone.tuned_sha256:
        tensors["body.safetensors"] = classifier.backbone.model.state_dict()
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    os.mkdir(staging, 0o777)  # the umask applies, as to the files below
    try:
        for name, state in tensors.items():
            _save_tensors(state, staging / name, {"save_id": save_id})
            _checkpoint(f"wrote {name}")
        (staging / "config.json").write_text(
            json.dumps({**config, "save_id": save_id}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        swap.keep_modes(path, staging)
        for file in staging.iterdir():
            swap.fsync(file)
        swap.fsync(staging)
        _checkpoint("staged")
        swap.put_in_place(staging, path, lambda step: _checkpoint(step))
        swap.fsync(path.parent)
        _checkpoint("synced")
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the unfinished new folder, or the old one after the swap
    _checkpoint("done")


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check a saved classifier's ``config.json`` without loading any network."""
    path = Path(path)
    for attempt in range(5):
        try:
            file = resolve(path) / "config.json"
            info = file.stat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CONFIG_BYTES:
                raise ValueError(f"not a regular file of at most {MAX_CONFIG_BYTES // 2**20} MB")
            config = json.loads(file.read_text(encoding="utf-8"))
            break
        except (FileNotFoundError, NotADirectoryError):  # none, or a fallback save moved it as we looked
            if attempt == 4:
                raise FewtuneError(
                    f"{path}: not a fewtune classifier (no config.json); create one with `fewtune train "
                    f"DATA -o {path}`"
                ) from None
            time.sleep(0.01 * (attempt + 1))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FewtuneError(
                f"{path / 'config.json'}: unreadable ({exc}); the classifier is damaged, train it again"
            ) from None
    config = validate_config(config, f"{path}/config.json")
    if config["format_version"] > FORMAT_VERSION:
        raise FewtuneError(
            f"{path}: saved by fewtune {config.get('fewtune_version', '?')} in format "
            f"{config['format_version']}, newer than this "
            f"fewtune {__version__} reads (format {FORMAT_VERSION}); upgrade with `pip install -U fewtune`"
        )
    save_id = config.get("save_id")
    if save_id is not None and not isinstance(save_id, str):
        raise FewtuneError(
            f"{path}/config.json: save_id: expected a string; the classifier is damaged, train it again"
        )
    _strategy(path, config)
    return config


def load(path: str | Path, backbone: Backbone | None = None) -> Classifier:
    """Load a saved classifier. Reads JSON and safetensors only: nothing in the folder can run code.

    Args:
        backbone: reuse an already-built backbone; it must have the same weights hash.
    """
    for _ in range(5):
        try:
            return _load_once(Path(path), backbone)
        except _Raced:
            continue
    raise FewtuneError(
        f"{path}: saved again while being read, five times over; retry when it is not being updated"
    )


def resolve(path: Path) -> Path:
    """``path``, or the copy a save killed between its two fallback renames left (see above)."""
    if path.exists():
        return path
    found = swap.retired(path)
    return found[0] if found else path


def _load_once(path: Path, backbone: Backbone | None) -> Classifier:
    config = read_config(path)
    folder, save_id = resolve(path), config.get("save_id")
    saved = config["backbone"]
    if backbone is None:
        packaged = saved["name"] in REGISTRY and saved["weights_source"] == REGISTRY[saved["name"]].package
        backbone = create_backbone(saved["name"], None if packaged else saved["weights_source"])
    if backbone.weights_sha256 != saved["weights_sha256"]:
        raise FewtuneError(
            f"{path}: trained with {saved['name']} weights {saved['weights_sha256'][:12]}… but this machine "
            "has "
            f"{backbone.weights_sha256[:12]}… ({backbone.weights_source}); install the same weights or "
            "retrain"
        )
    if backbone.dim != saved["embedding_dim"]:
        raise FewtuneError(
            f"{path}/config.json: backbone.embedding_dim is {saved['embedding_dim']} but {saved['name']} "
            f"gives {backbone.dim}; train the classifier again"
        )
    pretrained = None
    if saved.get("tuned_sha256"):
        pretrained = replace(backbone, preprocessing=copy.deepcopy(config["preprocessing"]))
        backbone = _load_tuned_body(path, folder, save_id, backbone, saved["tuned_sha256"])
    backbone = replace(
        backbone, preprocessing=copy.deepcopy(config["preprocessing"])
    )  # as trained, not today's default
    strategy = _strategy(path, config)
    state = _tensors(path, folder / "strategy.safetensors", save_id)
    support = _tensors(path, folder / "support.safetensors", save_id)
    if set(support) - {"pretrained_features"} != {"features", "labels"}:
        raise FewtuneError(
            f"{path}/support.safetensors: expected the tensors features and labels, got "
            f"{', '.join(support) or 'none'}; train the classifier again"
        )
    features, labels = support["features"].astype(np.float32), support["labels"].astype(np.int64)
    try:
        check_tensors(config, support["features"], support["labels"], state)
    except FewtuneError as exc:  # its messages name the file within the folder
        raise FewtuneError(f"{path}/{exc}") from None
    pretrained_support = support.get("pretrained_features")
    if pretrained_support is not None:
        if (
            pretrained is None
            or pretrained_support.shape != support["features"].shape
            or not bool(np.isfinite(pretrained_support).all())
        ):
            raise FewtuneError(
                f"{path}/support.safetensors: pretrained_features {tuple(pretrained_support.shape)} do not "
                "match the support features; train the classifier again"
            )
        pretrained_support = pretrained_support.astype(np.float32)
    else:
        pretrained = None  # saved before novelty moved to pretrained embeddings: measured on the tuned ones
    try:
        strategy.load_state_dict(state)
        probe = strategy.logits(features[:1])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise FewtuneError(
            f"{path}/strategy.safetensors: does not fit the {config['strategy']['name']} strategy "
            f"({type(exc).__name__}); train the classifier again"
        ) from None
    if tuple(probe.shape) != (1, len(config["classes"])):
        raise FewtuneError(
            f"{path}/strategy.safetensors: scores {probe.shape[-1]} classes but config.json names "
            f"{len(config['classes'])}; train the classifier again"
        )
    head = Head(
        strategy=strategy,
        classes=list(config["classes"]),
        support=Embeddings(features, features if pretrained_support is None else pretrained_support),
        labels=labels,
        open_set=OpenSet(**{**config["open_set"], "threshold": float(config["open_set"]["threshold"])}),
        temperature=float(config["calibration"]["temperature"]),
        calibration=config["calibration"],
        fit_report=config["strategy"].get("fit") or {},
    )
    return Classifier(
        backbone=backbone, head=head, pretrained=pretrained, training=config.get("training") or {}
    )


def _strategy(path: Path, config: dict[str, Any]) -> Strategy:
    """The strategy config.json names, built from its hyperparameters: its constructor checks them."""
    name = config["strategy"]["name"]
    try:
        return create_strategy(name, **config["strategy"]["hyperparameters"])
    except FewtuneError as exc:
        key = "strategy.hyperparameters" if name in STRATEGIES else "strategy.name"
        raise FewtuneError(f"{path}/config.json: {key}: {exc}; train the classifier again") from None
    except (
        KeyError,
        AttributeError,
        IndexError,
        OverflowError,
        RecursionError,
    ) as exc:  # a config can hold any JSON
        raise FewtuneError(
            f"{path}/config.json: strategy.hyperparameters: not valid for {name!r} ({type(exc).__name__}: "
            f"{exc}); train the classifier again"
        ) from None


def _save_tensors(state: dict[str, Any], file: Path, metadata: dict[str, str]) -> None:
    """NumPy arrays (a head's, its support) without torch; a tuned body's torch tensors with it."""
    if all(isinstance(v, np.ndarray) for v in state.values()):
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, file, metadata=metadata)
    else:
        from safetensors.torch import save_file as save_torch

        save_torch({k: v.contiguous() for k, v in state.items()}, file, metadata=metadata)


def _tensors(path: Path, file: Path, save_id: str | None, framework: str = "np") -> dict[str, Any]:
    """Every tensor of ``file`` (NumPy arrays, or torch tensors with ``framework="pt"``);
    :class:`_Raced` if it belongs to another save than config.json's."""
    try:
        with safe_open(file, framework) as opened:
            if save_id is not None and (opened.metadata() or {}).get("save_id") != save_id:
                if _save_id_now(path) != save_id:
                    raise _Raced
                raise FewtuneError(
                    f"{path}/{file.name}: belongs to another save than config.json (files mixed by hand); "
                    "train the classifier again"
                )
            return {key: opened.get_tensor(key) for key in opened.keys()}
    except (OSError, SafetensorError, ValueError, RuntimeError, TypeError) as exc:  # TypeError: bfloat16
        # raced too when the folder read from was moved away meanwhile: between the two renames
        # of a fallback save, the old save lives on only in the retired copy
        if save_id is not None and (save_id != _save_id_now(path) or save_id != _save_id_in(file.parent)):
            raise _Raced from None
        raise FewtuneError(
            f"{path}/{file.name}: missing or damaged tensor file ({exc}); train the classifier again"
        ) from None


def _save_id_now(path: Path) -> str | None:
    return _save_id_in(resolve(path))


def _save_id_in(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("save_id")
    except (OSError, ValueError, AttributeError):
        return None


def _load_tuned_body(
    path: Path, folder: Path, save_id: str | None, backbone: Backbone, expected: str
) -> Backbone:
    """A copy of ``backbone`` with the fine-tuned parameters of ``body.safetensors``, checked by hash."""
    import torch

    state = _tensors(path, folder / "body.safetensors", save_id, framework="pt")
    if state_sha256(state) != expected:
        raise FewtuneError(
            f"{path}/body.safetensors: does not match the hash in config.json (damaged or replaced); train "
            "the classifier again"
        )
    tuned = copy.deepcopy(backbone)
    try:
        tuned.model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise FewtuneError(
            f"{path}/body.safetensors: does not fit {backbone.timm_name}; train the classifier again"
        ) from None
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise FewtuneError(
            f"{path}/body.safetensors: holds NaN or infinite weights; train the classifier again"
        )
    return replace(tuned, tuned_sha256=expected)
