"""fewtune: from a handful of labelled images to a classifier you can trust.

    >>> clf = fewtune.train("photos/", strategy="probe")   # photos/<class>/*.jpg
    >>> clf.predict("a.jpg")[0].label                      # or a folder, a PIL image, an array, a list
    >>> clf.predict_proba(["a.jpg", "b.jpg"])              # (2, n_classes), columns: clf.classes_
    >>> clf.save("fruit.fewtune"); fewtune.load("fruit.fewtune")

The public names are imported on first use (PEP 562), so ``fewtune --help`` and ``--version``
do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fewtune._version import __version__ as __version__

_EXPORTS = {
    "Backbone": "fewtune.features.backbones",
    "create_backbone": "fewtune.features.backbones",
    "list_backbones": "fewtune.features.backbones",
    "Classifier": "fewtune.model.classifier",
    "Prediction": "fewtune.model.prediction",
    "load": "fewtune.model.classifier",
    "Dataset": "fewtune.data.dataset",
    "load_dataset": "fewtune.data.dataset",
    "FewtuneError": "fewtune.errors",
    "ImageInput": "fewtune.data.inputs",
    "create_strategy": "fewtune.strategies",
    "list_strategies": "fewtune.strategies",
    "train": "fewtune.model.training",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from fewtune.data.dataset import Dataset as Dataset
    from fewtune.data.dataset import load_dataset as load_dataset
    from fewtune.data.inputs import ImageInput as ImageInput
    from fewtune.errors import FewtuneError as FewtuneError
    from fewtune.features.backbones import Backbone as Backbone
    from fewtune.features.backbones import create_backbone as create_backbone
    from fewtune.features.backbones import list_backbones as list_backbones
    from fewtune.model.classifier import Classifier as Classifier
    from fewtune.model.classifier import load as load
    from fewtune.model.prediction import Prediction as Prediction
    from fewtune.model.training import train as train
    from fewtune.strategies import create_strategy as create_strategy
    from fewtune.strategies import list_strategies as list_strategies


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fewtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
