"""Training: contrastive losses, AdamW + cosine schedule, DDP, EMA, checkpoints, the loop."""
from climp.models.weights import StateDictMismatchError, load_state_dict_strict

from .checkpoint import LoadedCheckpoint, read_checkpoint
from .config import TrainConfig
from .stopping import TrainingStopped
from .trainer import TrainComponents, Trainer, format_results, train

# Earlier names of the strict loader and its error, kept for existing callers.
load_weights_strict = load_state_dict_strict
CheckpointMismatchError = StateDictMismatchError

__all__ = ["TrainConfig", "TrainComponents", "Trainer", "train", "format_results",
           "read_checkpoint", "load_state_dict_strict", "LoadedCheckpoint", "StateDictMismatchError",
           "load_weights_strict", "CheckpointMismatchError",
           "TrainingStopped"]
