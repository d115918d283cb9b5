"""Concurrent predictions share one forward pass: pictures from requests arriving within a few
milliseconds of each other are embedded in one batch, in a worker thread (never on the event loop)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
from PIL import Image

from fewtune.features.backbones import Backbone
from fewtune.features.embedding import embed_images


class Batcher:
    """Collects pictures from concurrent requests for a few milliseconds, embeds them in one batch."""

    def __init__(self, backbone: Backbone, window_s: float, max_batch: int = 32):
        self.backbone, self.window_s, self.max_batch = backbone, window_s, max_batch
        self._pending: list[tuple[list[Image.Image], Future]] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._run, daemon=True, name="fewtune-batcher").start()

    def embed(self, pictures: list[Image.Image]) -> np.ndarray:
        future: Future = Future()
        with self._cv:
            self._pending.append((pictures, future))
            self._cv.notify()
        return future.result()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending)
                self._cv.wait(timeout=self.window_s)  # let concurrent requests join this batch
                batch: list[tuple[list[Image.Image], Future]] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_batch):
                    batch.append(self._pending.pop(0))
                    size += len(batch[-1][0])
            try:
                features = embed_images(self.backbone, [p for pictures, _ in batch for p in pictures])
            except Exception as exc:  # noqa: BLE001 - hand the failure to the waiting requests
                for _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for pictures, future in batch:
                future.set_result(features[start : start + len(pictures)])
                start += len(pictures)
