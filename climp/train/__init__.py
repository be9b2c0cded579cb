"""Training: contrastive losses, AdamW + cosine schedule, DDP, EMA, checkpoints, the loop."""
from .checkpoint import CheckpointMismatchError, LoadedCheckpoint, load_weights_strict, read_checkpoint
from .config import TrainConfig
from .stopping import TrainingStopped
from .trainer import TrainComponents, Trainer, format_results, train

__all__ = ["TrainConfig", "TrainComponents", "Trainer", "train", "format_results",
           "read_checkpoint", "load_weights_strict", "LoadedCheckpoint", "CheckpointMismatchError",
           "TrainingStopped"]
