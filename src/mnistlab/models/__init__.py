"""Image classifiers by name: ``create_model("cnn", num_classes=10)``, all with one interface.

Importing this package registers every model family below.
"""

# Imported for their registrations.
from mnistlab.models import cnn, fastcnn, lenet, linear, resnet, vit  # noqa: F401
from mnistlab.models.base import Classifier
from mnistlab.models.registry import (
    DATA_ARGS,
    ModelEntry,
    count_params,
    create_model,
    list_models,
    model_args,
    recipe_args,
    register_model,
)

__all__ = [
    "DATA_ARGS",
    "Classifier",
    "ModelEntry",
    "count_params",
    "create_model",
    "list_models",
    "model_args",
    "recipe_args",
    "register_model",
]
