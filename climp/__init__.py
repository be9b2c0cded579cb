"""CLIMP: contrastive language-image pretraining with Mamba encoders, next to CLIP baselines."""
import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads its OpenMP runtime; an
# explicit OMP_WAIT_POLICY wins): spinning threads steal the cores of a shared machine from
# every other process, and from this one's own threads when another process is busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .models.factory import create_model, create_model_and_transforms, get_tokenizer, list_models, load_checkpoint

__version__ = "0.1.0"
__all__ = ["create_model", "create_model_and_transforms", "get_tokenizer", "list_models", "load_checkpoint"]
