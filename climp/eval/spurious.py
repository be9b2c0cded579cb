"""Spurious-correlation split: accuracy per group, worst-group and average accuracy."""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import torch

from .features import ImageFn
from .zeroshot import zero_shot_logits


def group_accuracies(correct: torch.Tensor, groups: Sequence[Any]) -> Dict[str, float]:
    """Accuracy within each group (keys are the group ids as strings)."""
    if len(correct) != len(groups):
        raise ValueError(f"{len(correct)} predictions but {len(groups)} group labels")
    out: Dict[str, list] = {}
    for ok, g in zip(correct.tolist(), groups):
        out.setdefault(str(g), []).append(ok)
    return {g: sum(v) / len(v) for g, v in sorted(out.items())}


def evaluate_spurious(model: torch.nn.Module, tokenizer: Callable, task: Any, image_fn: ImageFn,
                      batch_size: int = 64) -> Dict[str, Any]:
    """Worst-group and average accuracy of a ZeroShotTask whose groups are given per sample, either
    as task.groups or as a third element of every dataset sample."""
    logits, labels, extra = zero_shot_logits(model, tokenizer, task.classnames, task.templates, task.dataset,
                                             image_fn, batch_size, desc=f"spurious {task.name}")
    groups = extra[0] if extra else getattr(task, "groups", None)
    if groups is None:
        raise ValueError(f"task {task.name!r} has no group labels")
    if isinstance(groups, torch.Tensor):
        groups = groups.tolist()
    correct = logits.argmax(1) == labels
    per_group = group_accuracies(correct, list(groups))
    return {
        "average_accuracy": correct.float().mean().item(),
        "worst_group_accuracy": min(per_group.values()),
        "mean_group_accuracy": sum(per_group.values()) / len(per_group),
        "group_accuracy": per_group,
        "num_samples": len(labels),
    }
