"""Training configuration: one dataclass, built from defaults, a recipe file and flags.

Precedence is defaults < recipe file (`--config recipe.yaml|json`) < flags given explicitly on
the command line. Unknown keys in a recipe are an error, so a typo never trains silently with
a default.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union
from ..dataconfig import FromDict

LOSSES = ("clip", "siglip")
PRECISIONS = ("fp32", "bf16", "fp16")
CAPTION_STYLES = ("short", "dense", "mixed")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig(FromDict):
    """Every knob of a training run; field docs double as `climp train --help` text."""

    config_label = "training config keys"

    # model
    model: str = "climp-tiny"
    grad_checkpointing: bool = False
    image_pretrained: Optional[str] = None
    text_pretrained: Optional[str] = None
    lock_image: int = -1
    lock_text: int = -1
    lr_image_mult: float = 1.0
    lr_text_mult: float = 1.0
    # data
    data: str = "synthetic"
    train_data: Optional[str] = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    train_samples: int = 20_000
    caption_style: str = "short"
    partial_captions: float = 0.0
    hard_negatives: float = 0.0
    resolution: int = 64
    train_sides: Optional[str] = None
    workers: int = 0
    # optimisation
    steps: int = 450
    batch_size: int = 64
    accum_freq: int = 1
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    loss: str = "clip"
    local_loss: bool = False
    gather_with_grad: bool = True
    precision: str = "fp32"
    ema_decay: float = 0.0
    seed: int = 0
    # evaluation, logging, checkpoints
    eval_every: int = 0
    eval_samples: int = 500
    retrieval_samples: int = 1000
    log_every: int = 10
    save_every: int = 0
    name: Optional[str] = None
    output_dir: str = "runs"
    resume: Optional[str] = None
    tensorboard: bool = False
    progress: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.train_sides, (list, tuple)):
            self.train_sides = ",".join(str(v) for v in self.train_sides)
        self.validate()

    @property
    def sides(self) -> Optional[Tuple[int, ...]]:
        """The image sides of multi-resolution training (None: every batch at `resolution`)."""
        if not self.train_sides:
            return None
        return tuple(int(v) for v in str(self.train_sides).split(",") if v.strip())

    def validate(self) -> None:
        """Raise ValueError naming the first field with an impossible value."""
        choices = {"loss": LOSSES, "precision": PRECISIONS, "caption_style": CAPTION_STYLES,
                   "device": DEVICES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {allowed}")
        positive = ("steps", "batch_size", "accum_freq", "resolution", "train_samples",
                    "log_every", "eval_samples", "retrieval_samples")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        non_negative = ("warmup", "weight_decay", "grad_clip", "workers", "eval_every", "save_every")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        for key in ("lr_image_mult", "lr_text_mult"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                raise ValueError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        for key in ("lock_image", "lock_text"):
            if getattr(self, key) < -1:
                raise ValueError(f"{key} must be -1 (train the whole tower) or a number of unlocked groups >= 0")
        if not 0.0 <= self.hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must be in [0, 1], got {self.hard_negatives}")
        if not 0.0 <= self.partial_captions <= 1.0:
            raise ValueError(f"partial_captions must be in [0, 1], got {self.partial_captions}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.train_sides:
            try:
                sides = self.sides
            except ValueError:
                raise ValueError(f"train_sides must be comma-separated ints, got {self.train_sides!r}") from None
            if not sides or min(sides) < 1:
                raise ValueError(f"train_sides must be positive ints, got {self.train_sides!r}")
        if self.data not in ("synthetic", "files"):
            raise ValueError(f"data={self.data!r} is not one of ('synthetic', 'files')")
        if self.data == "files" and not self.train_data:
            raise ValueError("data='files' needs train_data (a CSV, an image folder or shards)")

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}-{self.loss}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (unknown keys are errors); train_data alone implies data='files'."""
        values = dict(values)
        if values.get("train_data") and "data" not in values:
            values["data"] = "files"
        return super().from_dict(values)


def load_recipe(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML or JSON recipe into a dict with underscore keys (dashes accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training recipe not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        recipe = json.loads(text)
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        recipe = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"recipe {path} must end in .json, .yaml or .yml")
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path} must hold a mapping of option: value, got {type(recipe).__name__}")
    return {str(k).replace("-", "_"): v for k, v in recipe.items()}


def resolve_config(explicit: Mapping[str, Any], recipe_path: Optional[str] = None) -> TrainConfig:
    """Merge defaults, an optional recipe file and explicitly given options (highest priority)."""
    merged: Dict[str, Any] = load_recipe(recipe_path) if recipe_path else {}
    merged.update(explicit)
    if merged.get("train_data") and "data" not in explicit:
        merged["data"] = "files"
    return TrainConfig.from_dict(merged)
