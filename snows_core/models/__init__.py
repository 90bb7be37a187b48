"""Model zoo: a registry of architectures, checkpoint loading, and the CIFAR ResNet family."""

from snows_core.io.checkpoint import load_weights, read_state_dict
from snows_core.models import resnet_cifar, zoo  # noqa: F401  (registers the models)
from snows_core.models._registry import (
    ModelInfo,
    check_hub_name,
    create_model,
    default_dataset,
    input_size,
    list_models,
    model_info,
    register_model,
)
from snows_core.models.footprint import describe_model

__all__ = [
    "ModelInfo",
    "describe_model",
    "check_hub_name",
    "create_model",
    "default_dataset",
    "input_size",
    "list_models",
    "model_info",
    "register_model",
    "load_weights",
    "read_state_dict",
]
