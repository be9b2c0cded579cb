"""CLIMP: contrastive language-image pretraining with Mamba encoders, next to CLIP baselines."""
import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads its OpenMP runtime;
# explicit settings win): spinning threads steal the cores of a shared machine from every other
# process, and from this one's own threads when another process is busy. GNU OpenMP (torch's
# runtime on Linux) first spins briefly (GOMP_SPINCOUNT iterations, microseconds), so a thread
# that finishes one op is still awake for the next parallel region instead of paying a futex
# wake-up per op: a training step with many small ops runs ~10% faster, and a busy neighbour
# still costs far less than with spinning threads (benchmarks/neighbour.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from .models.factory import create_model, create_model_and_transforms, get_tokenizer, list_models, load_checkpoint

__version__ = "0.1.0"
__all__ = ["create_model", "create_model_and_transforms", "get_tokenizer", "list_models", "load_checkpoint"]
