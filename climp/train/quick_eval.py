"""The small evaluation run during and after training: zero-shot accuracy and R@1/5/10, computed
by climp.eval's feature, zero-shot and retrieval functions.

The embedded tasks' samples are model-ready image tensors: zero-shot tasks with `classnames`,
`templates` (format strings with `{}` or `{c}`, or callables) and a dataset of (image, label);
retrieval sets of (image, list of captions).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, Iterable, Mapping

import torch
from torch import nn

from climp.eval.features import no_progress
from climp.eval.retrieval import evaluate_retrieval
from climp.eval.zeroshot import zero_shot_logits

RECALL_KS = (1, 5, 10)


def _model_ready(image: torch.Tensor) -> torch.Tensor:
    return image


def zero_shot_accuracy(model: nn.Module, tokenizer: Callable, task: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of nearest-class-embedding classification on `task.dataset`."""
    logits, labels, _ = zero_shot_logits(model, tokenizer, task.classnames, task.templates, task.dataset,
                                         _model_ready, batch_size, desc=f"zero-shot {getattr(task, 'name', '')}")
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def retrieval_recalls(model: nn.Module, tokenizer: Callable, dataset: Any, batch_size: int = 256,
                      ks: Iterable[int] = RECALL_KS) -> Dict[str, float]:
    """Recall@k both ways on a dataset of (image, list of captions), with class-level recalls
    when caption texts are shared by several images."""
    metrics = evaluate_retrieval(model, tokenizer, dataset, _model_ready, batch_size, tuple(ks))
    return {key: value for key, value in metrics.items() if key not in ("num_images", "num_captions")}


def quick_evaluate(model: nn.Module, tokenizer: Callable, zero_shot_tasks: Mapping[str, Any],
                   retrieval_set: Any, autocast: Callable[[], ContextManager] = contextlib.nullcontext
                   ) -> Dict[str, float]:
    """Zero-shot accuracy per task (`zeroshot_<name>`) and retrieval recalls, model in eval mode.

    `retrieval_set` is one dataset, None, or a mapping {name: dataset} whose metrics are
    prefixed `<name>/` (the name "" keeps them unprefixed).
    """
    was_training = model.training
    model.eval()
    try:
        with autocast(), no_progress():
            metrics = {f"zeroshot_{name}": zero_shot_accuracy(model, tokenizer, task)
                       for name, task in zero_shot_tasks.items()}
            sets = retrieval_set if isinstance(retrieval_set, Mapping) else {"": retrieval_set}
            for name, dataset in sets.items():
                if dataset is not None:
                    prefix = f"{name}/" if name else ""
                    metrics.update({prefix + key: value for key, value in
                                    retrieval_recalls(model, tokenizer, dataset).items()})
    finally:
        model.train(was_training)
    return metrics
