"""Training configuration: one dataclass, built from defaults, a recipe file and flags.

Precedence is defaults < recipe file (`--config recipe.yaml|json`) < flags given explicitly on
the command line. Unknown keys in a recipe are an error, so a typo never trains silently with
a default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

from ..config_mixin import FromDict
from ..settings import load_recipe, recipe_values, resolve, setting

LOSSES = ("clip", "siglip")
PRECISIONS = ("fp32", "bf16", "fp16")
CAPTION_STYLES = ("short", "dense", "mixed")
DEVICES = ("auto", "cpu", "cuda")
DATA_SOURCES = ("synthetic", "files")
MODEL, DATA, OPTIM, OUTPUT = "model", "data", "optimisation", "evaluation and output"


@dataclass
class TrainConfig(FromDict):
    """Every knob of a training run; each field's metadata holds its `climp train --help` text."""

    config_label = "training config keys"

    # model
    model: str = setting("climp-tiny", group=MODEL, help=(
        "model name from climp.list_models() (e.g. climp-tiny, clip-vit-tiny)"))
    grad_checkpointing: bool = setting(False, group=MODEL, help=(
        "recompute activations in the backward pass to save memory"))
    compile: bool = setting(False, group=MODEL, help=(
        "run the training forward and backward through torch.compile (the first steps pay the "
        "compilation; the selective scan is a custom op inside the compiled graph)"))
    image_pretrained: Optional[str] = setting(None, group=MODEL, metavar="PATH", help=(
        "start the image tower from a VMamba ImageNet or open_clip checkpoint"))
    text_pretrained: Optional[str] = setting(None, group=MODEL, metavar="PATH", help=(
        "start the text tower from a Mamba/Mamba-2 language model directory (transformers or "
        "mamba_ssm layout) or an open_clip checkpoint"))
    lock_image: int = setting(-1, group=MODEL, help=(
        "freeze the image tower but its last N layer groups (head included); -1 trains it all"))
    lock_text: int = setting(-1, group=MODEL, help=(
        "freeze the text tower but its last N layer groups (head included); -1 trains it all"))
    lr_image_mult: float = setting(1.0, group=MODEL, help="learning-rate multiplier of the image tower")
    lr_text_mult: float = setting(1.0, group=MODEL, help="learning-rate multiplier of the text tower")
    # data
    data: str = setting("synthetic", group=DATA, choices=DATA_SOURCES, help=(
        "training data: 'synthetic' (embedded scenes) or 'files' (set by --train-data)"))
    train_data: Optional[str] = setting(None, group=DATA, metavar="PATH", help=(
        "a CSV file, an image folder with captions, or webdataset shards such as "
        "'shards-{000..009}.tar' (implies --data files)"))
    val_data: Optional[str] = setting(None, group=DATA, metavar="PATH", help=(
        "held-out data evaluated during (--eval-every) and after training: a caption table, caption "
        "folder or shards (retrieval R@1/5/10), or a folder of class folders (zero-shot accuracy on "
        "the class names)"))
    csv_img_key: Optional[str] = setting(None, group=DATA, help=(
        "caption-table column holding image paths (default: detected: image, filepath, file, path, "
        "img, image_path)"))
    csv_caption_key: Optional[str] = setting(None, group=DATA, help=(
        "caption-table column holding captions (default: detected: caption, title, text)"))
    csv_separator: Optional[str] = setting(None, group=DATA, help=(
        "caption-table separator: one character, or 'tab' (default: detected from the header: "
        ", tab ; |)"))
    allow_pipe: bool = setting(False, group=DATA, help=(
        "allow webdataset 'pipe:CMD' data URLs, which run CMD in a shell"))
    max_caption_tokens: int = setting(256, group=DATA, help=(
        "captions longer than this many tokens are cut (end token kept) in training and evaluation, "
        "and counted; 0: no cap"))
    train_samples: int = setting(20_000, group=DATA, help="number of synthetic training scenes (one epoch)")
    caption_style: str = setting("short", group=DATA, choices=CAPTION_STYLES, help=(
        "synthetic captions: short, dense (long, many objects) or mixed"))
    partial_captions: float = setting(0.0, group=DATA, help=(
        "synthetic data: share of captions naming only some attributes of the main object, so every "
        "attribute is learned on its own"))
    hard_negatives: float = setting(0.0, group=DATA, help=(
        "synthetic data: share of scenes that come in groups of 8 differing in one attribute "
        "(in-batch hard negatives)"))
    object_scale: float = setting(1.0, group=DATA, help=(
        "synthetic data: factor on the objects' radii in training and the embedded evaluation "
        "(capped at half a grid cell; 1.0 is the benchmark)"))
    hard_negative_attributes: str = setting("shape,colour,size,position,background", group=DATA, help=(
        "synthetic data: comma-separated attributes a hard-negative group may vary (one per group)"))
    resolution: int = setting(64, group=DATA, help="image side length in pixels")
    train_sides: Optional[str] = setting(None, group=DATA, metavar="SIDES", help=(
        "multi-resolution training: comma-separated sides, e.g. 64,96,128; images are prepared at the "
        "largest and each batch is resized to a side drawn at random"))
    workers: int = setting(0, group=DATA, help=(
        "data-loader worker processes (0 loads in the main process); the run is the same bit for bit "
        "with any count"))
    # optimisation
    steps: int = setting(1200, group=OPTIM, help="optimizer steps to train for")
    batch_size: int = setting(64, group=OPTIM, help=(
        "images per rank per micro-batch (global batch = this x ranks x --accum-freq)"))
    accum_freq: int = setting(1, group=OPTIM, help=(
        "micro-batches per optimizer step; features are accumulated so the loss sees the whole batch"))
    lr: float = setting(1e-3, group=OPTIM, help="peak learning rate (AdamW)")
    warmup: int = setting(50, group=OPTIM, help="linear warm-up steps before the cosine decay")
    weight_decay: float = setting(0.1, group=OPTIM, help=(
        "AdamW weight decay (never applied to norms, biases, logit scale/bias, A_log, D)"))
    beta1: float = setting(0.9, group=OPTIM, help="AdamW beta1")
    beta2: float = setting(0.98, group=OPTIM, help="AdamW beta2")
    eps: float = setting(1e-6, group=OPTIM, help="AdamW epsilon")
    grad_clip: float = setting(1.0, group=OPTIM, help=(
        "clip the global gradient norm to this value (0 disables)"))
    loss: str = setting("clip", group=OPTIM, choices=LOSSES, help=(
        "contrastive loss: clip (softmax InfoNCE) or siglip (sigmoid)"))
    local_loss: bool = setting(False, group=OPTIM, help=(
        "distributed: each rank computes the loss of its own rows only"))
    gather_with_grad: bool = setting(True, group=OPTIM, help=(
        "distributed: back-propagate through the all-gather of features"))
    precision: str = setting("fp32", group=OPTIM, choices=PRECISIONS, help=(
        "fp32, bf16 (autocast, CPU or GPU) or fp16 (autocast + GradScaler, GPU only)"))
    ema_decay: float = setting(0.0, group=OPTIM, help=(
        "keep an exponential moving average of the weights with this decay and evaluate it (0 "
        "disables)"))
    seed: int = setting(0, group=OPTIM, help="seed of weights, data order and augmentation")
    # evaluation and output
    eval_every: int = setting(0, group=OUTPUT, help=(
        "run the quick evaluation every N steps (0: only at the end)"))
    eval_embedded: bool = setting(False, group=OUTPUT, help=(
        "evaluate the embedded benchmark's tasks also when training on files or with --val-data"))
    eval_samples: int = setting(500, group=OUTPUT, help="images per zero-shot task in the quick evaluation")
    retrieval_samples: int = setting(1000, group=OUTPUT, help="held-out scenes in the retrieval evaluation")
    log_every: int = setting(10, group=OUTPUT, help="write a metrics.jsonl line every N steps")
    save_every: int = setting(0, group=OUTPUT, help="write a checkpoint every N steps (0: only at the end)")
    name: Optional[str] = setting(None, group=OUTPUT, help=(
        "run name (default: <model>-<loss>); outputs go to <output-dir>/<name>"))
    output_dir: str = setting("runs", group=OUTPUT, metavar="DIR", help="directory holding runs")
    resume: Optional[str] = setting(None, group=OUTPUT, metavar="CKPT", help=(
        "resume from 'latest' (this run's newest checkpoint), a run directory, its checkpoints/ "
        "directory or a step directory"))
    resume_override: bool = setting(False, group=OUTPUT, help=(
        "resume although batch size, lr, schedule, model or other run settings differ from the "
        "checkpoint's, continuing with the new values"))
    tensorboard: bool = setting(False, group=OUTPUT, help="also log to TensorBoard under <run>/tensorboard")
    progress: bool = setting(True, group=OUTPUT, help="show a progress bar")
    device: str = setting("auto", group=OUTPUT, choices=DEVICES, help=(
        "auto (GPU when available), cpu or cuda"))

    def __post_init__(self) -> None:
        if self.csv_separator in ("tab", "\\t"):
            self.csv_separator = "\t"
        if isinstance(self.hard_negative_attributes, (list, tuple)):
            self.hard_negative_attributes = ",".join(self.hard_negative_attributes)
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
        non_negative = ("warmup", "weight_decay", "grad_clip", "workers", "eval_every", "save_every",
                        "max_caption_tokens")
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
        attributes = [a.strip() for a in str(self.hard_negative_attributes).split(",") if a.strip()]
        allowed = ("shape", "colour", "size", "position", "background")
        if not attributes or any(a not in allowed for a in attributes):
            raise ValueError(f"hard_negative_attributes must name some of {','.join(allowed)}, "
                             f"got {self.hard_negative_attributes!r}")
        if not 0.0 <= self.partial_captions <= 1.0:
            raise ValueError(f"partial_captions must be in [0, 1], got {self.partial_captions}")
        if not (self.object_scale > 0 and math.isfinite(self.object_scale)):
            raise ValueError(f"object_scale must be a positive finite number, got {self.object_scale}")
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
        if self.max_caption_tokens == 1:
            raise ValueError("max_caption_tokens must be 0 (no cap) or >= 2 (start and end tokens)")
        if self.csv_separator is not None and len(self.csv_separator) != 1:
            raise ValueError(f"csv_separator must be one character, got {self.csv_separator!r}")
        if self.data == "files" and not self.train_data:
            raise ValueError("data='files' needs train_data (a CSV, an image folder or shards)")

    @property
    def embedded_eval(self) -> bool:
        """Evaluate the embedded tasks: when asked, or when neither training nor validation
        data are files."""
        return self.eval_embedded or (self.data == "synthetic" and not self.val_data)

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


def resolve_config(explicit: Mapping[str, Any], recipe_path: Optional[Union[str, Path]] = None) -> TrainConfig:
    """Merge defaults, an optional recipe file and explicitly given options (highest priority);
    train_data from either implies data='files' unless data is given explicitly."""
    explicit = dict(explicit)
    if "data" not in explicit:
        recipe = recipe_values(TrainConfig, load_recipe(recipe_path), str(recipe_path)) if recipe_path else {}
        if explicit.get("train_data") or recipe.get("train_data"):
            explicit["data"] = "files"
    return resolve(TrainConfig, explicit, recipe_path)
