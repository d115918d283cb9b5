"""The strategies, one module each, and the registry that creates them by name."""

from __future__ import annotations

from typing import Any

from fewtune.errors import FewtuneError
from fewtune.strategies.auto import Auto as Auto
from fewtune.strategies.base import Strategy as Strategy
from fewtune.strategies.finetune import Finetune as Finetune
from fewtune.strategies.probe import Probe as Probe
from fewtune.strategies.prototype import Prototype as Prototype

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Auto, Prototype, Probe, Finetune)}


def list_strategies() -> list[str]:
    return list(STRATEGIES)


def create_strategy(name: str, **hyperparameters: Any) -> Strategy:
    """Build a strategy by name; an unknown name or setting is a :class:`FewtuneError`."""
    if name not in STRATEGIES:
        raise FewtuneError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    try:
        return STRATEGIES[name](**hyperparameters)
    except (TypeError, ValueError) as exc:
        raise FewtuneError(f"strategy {name!r}: {exc}") from None
