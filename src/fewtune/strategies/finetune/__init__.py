"""The ``finetune`` strategy: a cosine head for our classes, on the pretrained or a fine-tuned body.

One concept a module, in the order the strategy uses them:

- :mod:`.strategy`: :class:`Finetune` itself: decides, tunes a copy of the body (first
  cross-fitted when ``auto`` asks for held-out evidence), fits the head on the embeddings.
- :mod:`.decision`: whether tuning can pay, from the support set (``HEADROOM``, ``FAMILIARITY``,
  ``AUTO_TOP``...), and how long it will take.
- :mod:`.config`: :class:`FinetuneConfig` (every knob) and the ``--unfreeze`` forms.
- :mod:`.stages`: the body's stages, freeze / unfreeze, discriminative learning rates,
  :class:`SplitBody` (the frozen bottom run once per view).
- :mod:`.head`: :class:`CosineHead`, imprinted from class prototypes, and whether to train it.
- :mod:`.views`: the support pictures, the few held out to validate on, their augmented views.
- :mod:`.loop`: :func:`tune_body`, the training loop, and its :class:`TuneResult`.
- :mod:`.lr_finder`: the learning-rate range test (``train --lr-find``).
- :mod:`.checkpoints`: a checkpoint after every epoch, and ``--resume`` from it.

The names below are the ones used outside the package. Those of the training modules, which
import torch, are imported on first use (PEP 562, as ``fewtune`` itself does): ``auto`` reaches
:class:`Finetune` on every ``train`` and usually decides from cached embeddings alone that the
body stays frozen. The thresholds of :mod:`.decision` are not re-exported: they are read there
when a decision is made, so that is where to change them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fewtune.strategies.finetune.config import FinetuneConfig as FinetuneConfig
from fewtune.strategies.finetune.config import parse_unfreeze as parse_unfreeze
from fewtune.strategies.finetune.strategy import Finetune as Finetune

_TRAINING = {
    "CosineHead": "head",
    "TuneResult": "loop",
    "tune_body": "loop",
    "LrFind": "lr_finder",
    "lr_find": "lr_finder",
    "freeze": "stages",
    "layer_groups": "stages",
    "param_groups": "stages",
    "unfreeze": "stages",
    "load_pictures": "views",
}

if TYPE_CHECKING:
    from fewtune.strategies.finetune.head import CosineHead as CosineHead
    from fewtune.strategies.finetune.loop import TuneResult as TuneResult
    from fewtune.strategies.finetune.loop import tune_body as tune_body
    from fewtune.strategies.finetune.lr_finder import LrFind as LrFind
    from fewtune.strategies.finetune.lr_finder import lr_find as lr_find
    from fewtune.strategies.finetune.stages import freeze as freeze
    from fewtune.strategies.finetune.stages import layer_groups as layer_groups
    from fewtune.strategies.finetune.stages import param_groups as param_groups
    from fewtune.strategies.finetune.stages import unfreeze as unfreeze
    from fewtune.strategies.finetune.views import load_pictures as load_pictures


def __getattr__(name: str) -> Any:
    if name not in _TRAINING:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_TRAINING[name]}"), name)
