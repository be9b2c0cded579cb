"""Zero-shot classification: class-name x template prompts against image embeddings."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from .features import ImageFn, Template, class_embeddings, encode_dataset, logit_scale_of
from .metrics import classification_metrics


@torch.no_grad()
def zero_shot_logits(model: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str],
                     templates: Sequence[Template], dataset: Any, image_fn: ImageFn,
                     batch_size: int = 64, desc: str = "zero-shot", weights: Optional[torch.Tensor] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor, list]:
    """(logits (N, C) scaled by exp(logit_scale), labels (N,), extra sample columns); pass the
    class embeddings as `weights` to reuse them across passes."""
    if weights is None:
        weights = class_embeddings(model, tokenizer, classnames, templates)
    feats, columns = encode_dataset(model, dataset, image_fn, batch_size, desc=desc)
    if not columns:
        raise ValueError(f"{desc}: dataset must yield (image, label) pairs")
    labels = torch.as_tensor([int(v) for v in columns[0]])
    if labels.min() < 0 or labels.max() >= len(classnames):
        raise ValueError(f"{desc}: labels must lie in [0, {len(classnames)}), got [{labels.min()}, {labels.max()}]")
    return logit_scale_of(model) * feats @ weights.T, labels, columns[1:]


def evaluate_zero_shot(model: torch.nn.Module, tokenizer: Callable, task: Any, image_fn: ImageFn,
                       batch_size: int = 64) -> Dict[str, Any]:
    """Metrics for a task with .name, .classnames, .templates, .dataset (a ZeroShotTask)."""
    logits, labels, _ = zero_shot_logits(model, tokenizer, task.classnames, task.templates, task.dataset,
                                         image_fn, batch_size, desc=f"zero-shot {task.name}")
    out: Dict[str, Any] = classification_metrics(logits, labels, task.name)
    out["num_samples"] = len(labels)
    out["num_classes"] = len(task.classnames)
    return out
