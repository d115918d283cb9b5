"""Every phase over a second shows something: a bar when it can count, a spinner when it cannot."""

from __future__ import annotations

import copy
import time

from test_finetune import FAST, support

import fewtune
from fewtune import progress
from fewtune.model import training as trainer
from fewtune.strategies.finetune import loop
from fewtune.strategies.finetune.config import FinetuneConfig
from fewtune.strategies.finetune.loop import tune_body


class Recorder:
    """Stands in for ProgressBar / Status: remembers each phase, its total and how far it got."""

    phases: list

    def __init__(self, what: str, total: int = 0, enabled: bool = True):
        self.what, self.total, self.enabled, self.done = what, total, enabled, 0
        Recorder.phases.append(self)

    def __enter__(self):
        return self.advance

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.done += n

    def __exit__(self, *exc) -> None:
        pass


def test_fine_tuning_shows_the_views_being_prepared_before_its_first_step(
    tiny_backbone, colour_data, monkeypatch
):
    """The 10-30 s before the training bar go into embedding the augmented views: they get a bar."""
    Recorder.phases = []
    monkeypatch.setattr(loop, "ProgressBar", Recorder)
    pictures, labels, classes = support(colour_data)
    tune_body(
        copy.deepcopy(tiny_backbone), pictures, labels, classes, FinetuneConfig(**FAST), top=1, progress=True
    )
    views = FAST["views"] * len(labels)
    assert [(p.what, p.total) for p in Recorder.phases][:2] == [
        (f"fine-tuning: embedding {views} augmented views", 2 * views),  # the frozen bottom, then the top
        ("fine-tuning", Recorder.phases[1].total),
    ]
    assert all(p.enabled and p.done == p.total for p in Recorder.phases)


def test_training_names_its_uncounted_phases(tiny_weights, colour_data, monkeypatch):
    Recorder.phases = []
    monkeypatch.setattr(trainer, "Status", Recorder)
    fewtune.train(colour_data, "probe", backbone="test_efficientnet", weights=tiny_weights, progress=True)
    assert [p.what for p in Recorder.phases] == [
        "loading the test_efficientnet backbone",
        "fitting probe: the head, calibration and the unknown threshold",
    ]
    assert all(p.enabled for p in Recorder.phases)


def test_a_status_appears_only_after_a_second():
    with progress.Status("quick") as quick:
        pass
    time.sleep(1.2)
    assert quick.live is False  # the timer was cancelled: nothing ever drawn
    with progress.Status("slow") as slow:
        time.sleep(1.3)
        assert slow.live  # a spinner is up
    assert slow.live is False
