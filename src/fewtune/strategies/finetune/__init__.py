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

The package itself imports no torch: ``auto`` reaches :class:`Finetune` on every ``train`` and
usually decides from cached embeddings that the body stays frozen. The training modules, which
do import torch, are imported from their own module where they are used. The thresholds of
:mod:`.decision` are not re-exported: they are read there when a decision is made, so that is
where to change them.
"""

from __future__ import annotations

from fewtune.strategies.finetune.config import FinetuneConfig as FinetuneConfig
from fewtune.strategies.finetune.config import parse_unfreeze as parse_unfreeze
from fewtune.strategies.finetune.strategy import Finetune as Finetune
