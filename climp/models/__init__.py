"""Towers, the dual encoder and the model registry."""
from .clip import CLIP, build_text_tower, build_vision_tower
from .factory import (
    create_model,
    create_model_and_transforms,
    get_model_config,
    get_tokenizer,
    list_models,
    load_checkpoint,
)

__all__ = [
    "CLIP",
    "build_text_tower",
    "build_vision_tower",
    "create_model",
    "create_model_and_transforms",
    "get_model_config",
    "get_tokenizer",
    "list_models",
    "load_checkpoint",
]
