"""CLIMP: contrastive language-image pretraining with Mamba encoders, next to CLIP baselines."""
from .models.factory import create_model, create_model_and_transforms, get_tokenizer, list_models, load_checkpoint

__version__ = "0.1.0"
__all__ = ["create_model", "create_model_and_transforms", "get_tokenizer", "list_models", "load_checkpoint"]
