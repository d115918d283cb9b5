"""What every command prints through: the two consoles, ``--json`` text, and a saved classifier's
settings, fit, calibration and open set described in words (by `train` and `info` alike)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from fewtune.model.openset import OpenSet

# Paths, labels and class names are the user's, and may hold "[/]" or "[bold red]": markup is off
# everywhere (tables included) and a site that styles text opts in with markup=True, escaping each value.
out = Console(markup=False)  # results: stdout
# progress, summaries and errors: stderr, so --json output stays clean
err = Console(stderr=True, soft_wrap=True, markup=False)


def waiting(message: str) -> None:
    """Say why a command waits (another process holds the model's lock)."""
    err.print(message, highlight=False, markup=False)


def json_text(data: Any) -> str:
    """``--json`` output: valid JSON always. Python's json would write NaN and Infinity, which
    JSON has not; non-finite numbers are written as the strings "NaN", "Infinity", "-Infinity"
    (which JavaScript's Number() and Python's float() read back)."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=2, ensure_ascii=False, allow_nan=False)


def human(value: object) -> str:
    """A setting as a person would write it: 0.001, yes, 0.01 / 0.1, (a → 1, b → 2); never a Python repr."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " / ".join(human(v) for v in value)
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} → {human(v)}" for k, v in value.items()) + ")"
    return str(value)


def human_settings(settings: dict) -> str:
    """``l2 auto, folds 5, l2 grid 0.0001 / 0.001``: names without underscores, values by :func:`human`."""
    return ", ".join(f"{str(k).replace('_', ' ')} {human(v)}" for k, v in settings.items())


def describe_fit(fit: dict) -> list[str]:
    """What fitting chose; for ``finetune``, the body and head decisions and how training went."""
    lines = []
    if "chosen" in fit:  # auto
        fit = dict(fit)
        lines.append(f"auto chose {fit.pop('chosen')}: {fit.pop('why', '')}")
        fit.pop("held_out_accuracy", None)
        if skipped := fit.pop("fine-tuning", None):
            lines.append(f"body not fine-tuned: {skipped.get('why', '')}")
    if "body" not in fit:
        return lines + (["fit: " + human_settings(fit)] if fit else [])
    body, head = fit["body"], fit["head"]
    lines.append(f"body: unfreeze {body.get('unfreeze', 'none')} ({body.get('why', 'as saved')})")
    if result := body.get("result"):
        best = ""
        if result["best_epoch"] is not None:
            best = f", kept epoch {result['best_epoch']} (validation accuracy {result['val_accuracy']:.1%})"
        lines.append(
            f"fine-tuned {result['epochs']} epochs, {result['steps']} steps on {result['views']} augmented "
            f"views in {result['seconds']:.1f} s: loss {result['final_loss']:.3f}, "
            f"training accuracy {result['train_accuracy']:.1%}{best}"
        )
    trained = "trained" if head["trained"] else "imprinted from the class prototypes"
    lines.append(f"head: {trained} ({head['why']})")
    return lines


def describe_calibration(calibration: dict) -> str:
    if calibration.get("temperature", 1.0) == 1.0 and "nll_before" not in calibration:
        method = calibration.get("method", "none")
        if calibration.get("tuned_body"):
            return f"probabilities: temperature 1, {method.removeprefix('none: ')}"
        return f"probabilities: not calibrated ({method}); 2+ examples per class enable it"
    method = str(calibration.get("method", "temperature scaling on held-out support predictions"))
    held_out = f"{calibration['held_out_predictions']} " if "held_out_predictions" in calibration else ""
    where = held_out + method.removeprefix("temperature scaling on ")
    kept = f"; {calibration['kept']}" if "kept" in calibration else ""
    return f"probabilities: temperature {calibration['temperature']:.3g}, fitted on {where}{kept}"


def describe_open_set(settings: OpenSet) -> str:
    if not settings.enabled:
        return f"open set: off (--closed-set); novelty threshold {settings.threshold:.3f} if turned on"
    return (
        f'open set: inputs with novelty > {settings.threshold:.3f} are "{settings.unknown_label}" '
        f"({settings.calibration.get('method', '')})"
    )


def describe_record(describe: Callable[[dict], Any], record: dict, name: str) -> Any:
    """``describe(record)``, or the raw record when it was edited out of the shape describe expects."""
    try:
        return describe(record)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return [f"{name}: {record}"] if describe is describe_fit else f"{name}: {record}"
