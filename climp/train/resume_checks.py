"""What a resumed run may change: settings that shape the run must match the checkpoint's, unless
`--resume-override` says to train on with the new values; then the optimiser, the schedule and
the data position are brought in line with them, so what is logged is what is used."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch

from climp.models.checkpoint_files import read_sidecar

from .checkpoint import resume_candidates
from .config import TrainConfig

# Settings a resumed run must share with its checkpoint (logging, evaluation, output and
# device options may change freely).
CHECKED_SETTINGS = (
    "model", "lock_image", "lock_text", "lr_image_mult", "lr_text_mult",
    "data", "train_data", "train_samples", "caption_style", "partial_captions", "hard_negatives",
    "object_scale", "hard_negative_attributes",
    "resolution", "steps", "batch_size", "accum_freq", "lr", "warmup", "weight_decay", "beta1",
    "beta2", "eps", "grad_clip", "loss", "local_loss", "gather_with_grad", "precision",
    "ema_decay", "seed", "max_caption_tokens", "train_sides",
)
Changes = Dict[str, Tuple[Any, Any]]


def changed_settings(saved: Mapping[str, Any], config: TrainConfig, saved_world_size: int = 1,
                     world_size: int = 1) -> Changes:
    """{setting: (checkpoint's value, this run's value)} for every checked setting that differs."""
    changes = {key: (saved[key], getattr(config, key)) for key in CHECKED_SETTINGS
               if key in saved and saved[key] != getattr(config, key)}
    if saved_world_size != world_size:
        changes["world_size"] = (saved_world_size, world_size)
    return changes


def describe(changes: Changes) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_resume_settings(changes: Changes, override: bool, directory: Any) -> None:
    """Raise ValueError naming every changed setting with both values, unless `override`."""
    if changes and not override:
        raise ValueError(
            f"cannot resume from {directory}: this run's settings differ from the checkpoint's "
            f"({describe(changes)}); resume with the checkpoint's values, or pass "
            "--resume-override to continue with the new ones")


def check_before_building(config: TrainConfig) -> None:
    """The resume checks that need only the checkpoint's config.json (its existence, changed
    settings), made before any model is built so a wrong flag fails at once."""
    if not config.resume:
        return
    directory = resume_candidates(config.resume, config.run_dir / "checkpoints")[0]
    try:
        saved = read_sidecar(directory).get("train", {})
    except (ValueError, OSError):
        return  # an unreadable checkpoint is skipped or reported when the run resumes
    check_resume_settings(changed_settings(saved, config), config.resume_override, directory)


def hyperparameters(optimizer: torch.optim.Optimizer) -> List[Dict[str, Any]]:
    """Each param group's settings (lr, initial_lr, weight decay, betas, eps, ...) without params."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def apply_hyperparameters(optimizer: torch.optim.Optimizer,
                          scheduler: torch.optim.lr_scheduler.LambdaLR,
                          fresh: List[Dict[str, Any]]) -> None:
    """Replace the loaded param groups' settings by `fresh` (from this run's config) and set the
    current lr from this run's schedule at the restored step."""
    if len(fresh) != len(optimizer.param_groups):
        raise ValueError("the new settings group the parameters differently from the checkpoint "
                         f"({len(fresh)} vs {len(optimizer.param_groups)} optimiser groups)")
    for group, values in zip(optimizer.param_groups, fresh):
        group.update(values)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)


def convert_batch_position(batch_in_epoch: int, old_samples_per_batch: int,
                           new_samples_per_batch: int) -> int:
    """The micro-batch of the new size at which the epoch continues (rounded down, so samples
    may repeat but none of the epoch is skipped)."""
    return batch_in_epoch * old_samples_per_batch // new_samples_per_batch
