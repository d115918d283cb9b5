"""Image files -> embeddings: read, hash, decode and preprocess in background threads while the
backbone runs, and skip all of that for images already in the cache.

Embeddings leave here as NumPy float32 arrays: everything past the backbone works on them, and a
run served from the cache never imports torch (see :mod:`fewtune.numeric`)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from fewtune.data import images
from fewtune.errors import FewtuneError
from fewtune.features.backbones import Backbone
from fewtune.features.cache import FeatureCache, default_cache_dir, shared_cache
from fewtune.progress import ProgressBar

if TYPE_CHECKING:
    import torch


@dataclass
class Embedded:
    """Embeddings of the readable inputs, in input order.

    Attributes:
        features: (n_ok, dim) float32.
        kept: indices into the input list of the rows of ``features``.
        hashes: sha256 of each kept file's bytes (same order as ``features``).
        bad: ``(path, reason)`` for inputs skipped under ``skip_bad``.
        computed: how many embeddings the backbone computed (the rest came from the cache).
    """

    features: np.ndarray
    kept: list[int]
    hashes: list[str]
    bad: list[tuple[Path, str]] = field(default_factory=list)
    computed: int = 0


def build_transform(preprocessing: dict[str, Any]) -> Callable:
    """timm's eval transform for these settings (resize, centre crop, normalise); built once per
    settings (building it was ~0.5 ms of every single-image predict)."""
    return _transform(json.dumps(preprocessing, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _transform(settings: str) -> Callable:
    from timm.data import create_transform

    kwargs: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(settings).items()
    }
    return create_transform(**kwargs, is_training=False)


def decode_size(preprocessing: dict[str, Any]) -> int:
    """Smallest side a picture needs before preprocessing (resize to input / crop_pct, then crop),
    so larger ones can be decoded at reduced scale."""
    return int(max(preprocessing["input_size"][1:]) / preprocessing["crop_pct"]) + 1


def embed_files(
    backbone: Backbone,
    paths: Sequence[Path],
    *,
    cache: FeatureCache | None | bool = True,
    batch_size: int = 32,
    skip_bad: bool = False,
    progress: bool = False,
    transform: Callable | None = None,
) -> Embedded:
    """Embed image files with ``backbone``, reading what it can from the cache.

    Args:
        cache: a :class:`FeatureCache`, True for the default one, False/None for none.
        skip_bad: skip unreadable images and report them in ``Embedded.bad`` instead of failing.
        progress: show a progress bar (on stderr) when there is backbone work to do.
        transform: overrides the backbone's preprocessing (for tests and benchmarks).
    """
    if cache is True:
        cache = shared_cache(default_cache_dir(), backbone.fingerprint, backbone.dim)
    draft = decode_size(backbone.preprocessing)

    # one file (a single predict): threads would only add their start-up to the latency
    with ThreadPoolExecutor(max_workers=2) if len(paths) > 1 else _Inline() as pool:
        # pass 1: hash every file, streaming (bytes are not kept: a folder may hold gigabytes of photos)
        hashed = list(pool.map(_safe(images.sha256_file), paths))
        bad: dict[int, str] = {i: str(h) for i, h in enumerate(hashed) if isinstance(h, FewtuneError)}
        _raise_unless(skip_bad, bad)
        hashes: list[str | None] = [h if isinstance(h, str) else None for h in hashed]
        cached = cache.get_many(h for h in hashes if h) if cache else {}
        vectors: dict[int, np.ndarray] = {i: cached[h] for i, h in enumerate(hashes) if h in cached}
        todo = [i for i, h in enumerate(hashes) if h and h not in cached]
        if todo:  # torch and timm's transforms only when there is backbone work to do
            import torch

            transform = transform or build_transform(backbone.preprocessing)

        preprocess = cast(Callable, transform)  # built above whenever prepare() will run

        def prepare(i: int) -> torch.Tensor:
            # key the row by the bytes actually embedded (the file may have changed since pass 1)
            hashes[i], picture = images.load_hashed(paths[i], draft_size=draft)
            return preprocess(picture)

        # pass 2: decode batch b+1 in the pool while the backbone runs on batch b
        new_rows: dict[str, np.ndarray] = {}
        computed = 0
        batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
        try:
            with ProgressBar("embedding images", len(todo), enabled=progress) as advance:
                pending = [pool.submit(_prepare_batch, prepare, b) for b in batches[:1]]
                for b, batch in enumerate(batches):
                    if b + 1 < len(batches):
                        pending.append(pool.submit(_prepare_batch, prepare, batches[b + 1]))
                    tensors, errors = pending[b].result()
                    bad.update(errors)
                    _raise_unless(skip_bad, errors)
                    ok = [i for i in batch if i not in errors]
                    if ok:
                        out = backbone.embed(torch.stack([tensors[i] for i in ok])).numpy()
                        computed += len(ok)
                        for i, row in zip(ok, out, strict=True):
                            vectors[i] = row
                            new_rows[cast(str, hashes[i])] = row  # set by prepare()
                    advance(len(batch))
        finally:  # keep what was computed, even when a bad file or Ctrl-C stops the run
            if cache:
                cache.put_many(new_rows)

    kept = sorted(vectors)
    features = np.stack([vectors[i] for i in kept]) if kept else np.empty((0, backbone.dim))
    return Embedded(
        features=features.astype(np.float32, copy=False),
        kept=kept,
        hashes=[cast(str, hashes[i]) for i in kept],  # every kept row was hashed
        bad=[(Path(paths[i]), bad[i]) for i in sorted(bad)],
        computed=computed,
    )


def embed_images(backbone: Backbone, pictures: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
    """(n, dim) embeddings of pictures already decoded to RGB (e.g. uploads), uncached."""
    import torch

    transform = build_transform(backbone.preprocessing)
    if not pictures:
        return np.empty((0, backbone.dim), dtype=np.float32)
    batches = [
        torch.stack([transform(p) for p in pictures[s : s + batch_size]])
        for s in range(0, len(pictures), batch_size)
    ]
    return torch.cat([backbone.embed(b) for b in batches]).numpy()


class _Inline:
    """The part of ThreadPoolExecutor that embed_files uses, run in the calling thread."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable, items: Sequence) -> list:
        return [fn(item) for item in items]

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through result(), as a pool would
            future.set_exception(exc)
        return future


def _raise_unless(skip_bad: bool, bad: dict[int, str]) -> None:
    """Stop at the first bad file (in input order) unless asked to skip such files."""
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise FewtuneError(bad[min(bad)] + more)


def _safe(fn: Callable) -> Callable:
    """Return a FewtuneError instead of raising it, so one bad file doesn't stop a pool map."""

    def wrapped(*args):
        try:
            return fn(*args)
        except FewtuneError as exc:
            return exc

    return wrapped


def _prepare_batch(prepare: Callable, batch: list[int]) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
    tensors, errors = {}, {}
    for i in batch:
        try:
            tensors[i] = prepare(i)
        except FewtuneError as exc:
            errors[i] = str(exc)
    return tensors, errors
