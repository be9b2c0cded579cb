"""`climp train`: flags, an optional recipe file, and the results table at the end."""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Dict

from .config import CAPTION_STYLES, DEVICES, LOSSES, PRECISIONS, TrainConfig, resolve_config

DESCRIPTION = """Train a CLIP-style dual encoder with a contrastive loss.

With no arguments: trains climp-tiny (VMamba image tower + Mamba text tower) on the embedded
synthetic-scenes benchmark on the CPU, then prints zero-shot and retrieval results and writes
runs/<name>/results.json, metrics.jsonl, loss_curve.png and checkpoints/. The same command
under `torchrun --nproc_per_node N` trains with DistributedDataParallel (gloo on the CPU,
nccl on GPUs). Explicit flags override values from --config."""

HELP: Dict[str, str] = {
    "model": "model name from climp.list_models() (e.g. climp-tiny, clip-vit-tiny)",
    "grad_checkpointing": "recompute activations in the backward pass to save memory",
    "image_pretrained": "start the image tower from a VMamba ImageNet or open_clip checkpoint",
    "text_pretrained": "start the text tower from a Mamba/Mamba-2 language model directory "
                       "(transformers or mamba_ssm layout) or an open_clip checkpoint",
    "lock_image": "freeze the image tower but its last N layer groups (head included); -1 trains it all",
    "lock_text": "freeze the text tower but its last N layer groups (head included); -1 trains it all",
    "lr_image_mult": "learning-rate multiplier of the image tower",
    "lr_text_mult": "learning-rate multiplier of the text tower",
    "data": "training data: 'synthetic' (embedded scenes) or 'files' (set by --train-data)",
    "train_data": "a CSV file, an image folder with captions, or webdataset shards "
                  "such as 'shards-{000..009}.tar' (implies --data files)",
    "csv_img_key": "CSV column holding image paths",
    "csv_caption_key": "CSV column holding captions",
    "csv_separator": "CSV field separator",
    "train_samples": "number of synthetic training scenes (one epoch)",
    "caption_style": "synthetic captions: short, dense (long, many objects) or mixed",
    "partial_captions": "synthetic data: share of captions naming only some attributes of the "
                        "main object, so every attribute is learned on its own",
    "hard_negatives": "synthetic data: share of scenes that come in groups of 8 differing in one "
                      "attribute (in-batch hard negatives)",
    "resolution": "image side length in pixels",
    "train_sides": "multi-resolution training: comma-separated sides, e.g. 64,96,128; images are "
                   "prepared at the largest and each batch is resized to a side drawn at random",
    "workers": "data-loader worker processes (0 loads in the main process)",
    "steps": "optimizer steps to train for",
    "batch_size": "images per rank per micro-batch (global batch = this x ranks x --accum-freq)",
    "accum_freq": "micro-batches per optimizer step; features are accumulated so the loss "
                  "sees the whole batch",
    "lr": "peak learning rate (AdamW)",
    "warmup": "linear warm-up steps before the cosine decay",
    "weight_decay": "AdamW weight decay (never applied to norms, biases, logit scale/bias, A_log, D)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "eps": "AdamW epsilon",
    "grad_clip": "clip the global gradient norm to this value (0 disables)",
    "loss": "contrastive loss: clip (softmax InfoNCE) or siglip (sigmoid)",
    "local_loss": "distributed: each rank computes the loss of its own rows only",
    "gather_with_grad": "distributed: back-propagate through the all-gather of features",
    "precision": "fp32, bf16 (autocast, CPU or GPU) or fp16 (autocast + GradScaler, GPU only)",
    "ema_decay": "keep an exponential moving average of the weights with this decay and "
                 "evaluate it (0 disables)",
    "seed": "seed of weights, data order and augmentation",
    "eval_every": "run the quick evaluation every N steps (0: only at the end)",
    "eval_samples": "images per zero-shot task in the quick evaluation",
    "retrieval_samples": "held-out scenes in the retrieval evaluation",
    "log_every": "write a metrics.jsonl line every N steps",
    "save_every": "write a checkpoint every N steps (0: only at the end)",
    "name": "run name (default: <model>-<loss>); outputs go to <output-dir>/<name>",
    "output_dir": "directory holding runs",
    "resume": "resume from 'latest' (this run's newest checkpoint) or a checkpoint path",
    "tensorboard": "also log to TensorBoard under <run>/tensorboard",
    "progress": "show a progress bar",
    "device": "auto (GPU when available), cpu or cuda",
}

CHOICES = {"loss": LOSSES, "precision": PRECISIONS, "caption_style": CAPTION_STYLES,
           "device": DEVICES, "data": ("synthetic", "files")}

GROUPS = {
    "model": ("model", "grad_checkpointing", "image_pretrained", "text_pretrained", "lock_image",
              "lock_text", "lr_image_mult", "lr_text_mult"),
    "data": ("data", "train_data", "csv_img_key", "csv_caption_key", "csv_separator",
             "train_samples", "caption_style", "partial_captions", "hard_negatives", "resolution", "train_sides", "workers"),
    "optimisation": ("steps", "batch_size", "accum_freq", "lr", "warmup", "weight_decay",
                     "beta1", "beta2", "eps", "grad_clip", "loss", "local_loss",
                     "gather_with_grad", "precision", "ema_decay", "seed"),
    "evaluation and output": ("eval_every", "eval_samples", "retrieval_samples", "log_every",
                              "save_every", "name", "output_dir", "resume", "tensorboard",
                              "progress", "device"),
}


def _value_type(field_type: Any, default: Any):
    if isinstance(default, float) or "float" in str(field_type):
        return float
    if isinstance(default, int) or "int" in str(field_type):
        return int
    return str


def _metavar(name: str, default: Any) -> str:
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return {"train_data": "PATH", "resume": "CKPT", "output_dir": "DIR", "image_pretrained": "PATH",
                "text_pretrained": "PATH"}.get(name, "STR")
    return "N" if isinstance(default, int) else "X"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every TrainConfig field as a flag; unset flags stay out of the namespace."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", dest="config", default=argparse.SUPPRESS, metavar="RECIPE",
                        help="YAML or JSON recipe with any of the options below")
    by_name = {f.name: f for f in fields(TrainConfig)}
    missing = set(by_name) - {n for names in GROUPS.values() for n in names}
    if missing:
        raise RuntimeError(f"train options without a help group: {sorted(missing)}")
    for title, names in GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            spec = by_name[name]
            flag = "--" + name.replace("_", "-")
            text = HELP[name] if spec.default is None else f"{HELP[name]} (default: {spec.default!r})"
            if isinstance(spec.default, bool):
                group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=text)
            else:
                group.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=text,
                                   type=_value_type(spec.type, spec.default),
                                   choices=CHOICES.get(name),
                                   metavar=None if name in CHOICES else _metavar(name, spec.default))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config recipe < flags given explicitly."""
    known = {f.name for f in fields(TrainConfig)}
    explicit = {k: v for k, v in vars(args).items() if k in known}
    return resolve_config(explicit, getattr(args, "config", None))


def run(args: argparse.Namespace) -> int:
    from .trainer import format_results, train

    config = config_from_args(args)
    results = train(config)
    if results:
        print(format_results(results))
        print(f"results: {config.run_dir / 'results.json'}")
    return 0
