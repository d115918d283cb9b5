"""fewtune: from a handful of labelled images to a classifier you can trust.

    >>> clf = fewtune.train("photos/", strategy="probe")   # photos/<class>/*.jpg
    >>> clf.predict("a.jpg")[0].label                      # or a folder, a PIL image, an array, a list
    >>> clf.predict_proba(["a.jpg", "b.jpg"])              # (2, n_classes), columns: clf.classes_
    >>> clf.save("fruit.fewtune"); fewtune.load("fruit.fewtune")
"""

from fewtune._version import __version__ as __version__
from fewtune.backbones import Backbone as Backbone
from fewtune.backbones import create_backbone as create_backbone
from fewtune.backbones import list_backbones as list_backbones
from fewtune.classifier import Classifier as Classifier
from fewtune.classifier import Prediction as Prediction
from fewtune.classifier import load as load
from fewtune.dataset import Dataset as Dataset
from fewtune.dataset import load_dataset as load_dataset
from fewtune.errors import FewtuneError as FewtuneError
from fewtune.strategies import create_strategy as create_strategy
from fewtune.strategies import list_strategies as list_strategies
from fewtune.inputs import ImageInput as ImageInput
from fewtune.trainer import train as train

__all__ = [
    "Backbone",
    "Classifier",
    "Dataset",
    "FewtuneError",
    "ImageInput",
    "Prediction",
    "__version__",
    "create_backbone",
    "create_strategy",
    "list_backbones",
    "list_strategies",
    "load",
    "load_dataset",
    "train",
]
