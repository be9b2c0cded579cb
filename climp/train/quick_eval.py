"""The small evaluation run during and after training: zero-shot accuracy and R@1/5/10.

The full evaluation suite lives in `climp.eval`; this module only needs the embedded tasks'
contract: zero-shot tasks with `classnames`, `templates` (format strings with `{}` or `{c}`, or
callables) and a dataset of (image, label); retrieval sets of (image, list of captions).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from climp.eval.retrieval import class_level_recall

RECALL_KS = (1, 5, 10)


def _fill(template: Any, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname, c=classname)


def _stack_pairs(batch: Sequence[Tuple[torch.Tensor, Any]]) -> Tuple[torch.Tensor, List[Any]]:
    images, targets = zip(*batch)
    return torch.stack(list(images)), list(targets)


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: Callable, texts: Sequence[str], device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    """L2-normalised float32 text features, encoded in batches."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[start:start + batch_size])).to(device)
        chunks.append(model.encode_text(ids, normalize=True).float())
    return torch.cat(chunks)


@torch.no_grad()
def zero_shot_classifier(model: nn.Module, tokenizer: Callable, classnames: Sequence[str],
                         templates: Sequence[Any], device: torch.device) -> torch.Tensor:
    """(num_classes, E) class embeddings: mean of normalised template embeddings, renormalised."""
    prompts = [_fill(t, c) for c in classnames for t in templates]
    features = encode_texts(model, tokenizer, prompts, device)
    features = features.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(features, dim=-1)


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, tokenizer: Callable, task: Any, device: torch.device,
                       batch_size: int = 256) -> float:
    """Top-1 accuracy of nearest-class-embedding classification on `task.dataset`."""
    classifier = zero_shot_classifier(model, tokenizer, task.classnames, task.templates, device)
    correct = total = 0
    for images, labels in DataLoader(task.dataset, batch_size=batch_size, collate_fn=_stack_pairs):
        features = model.encode_image(images.to(device), normalize=True).float()
        predictions = (features @ classifier.T).argmax(dim=-1).cpu()
        correct += int((predictions == torch.as_tensor(labels)).sum())
        total += len(labels)
    if total == 0:
        raise ValueError(f"zero-shot task {getattr(task, 'name', '?')} has no samples")
    return correct / total


def recall_at_k(similarity: torch.Tensor, text_to_image: torch.Tensor,
                ks: Iterable[int] = RECALL_KS) -> Dict[str, float]:
    """Image->text and text->image recall@k from an (images, texts) similarity matrix.

    `text_to_image[j]` is the image index of caption j. An image counts as retrieved at k
    when any of its captions is among its k most similar texts.
    """
    num_images, num_texts = similarity.shape
    results: Dict[str, float] = {}
    owner = text_to_image.to(similarity.device)
    for k in ks:
        top_texts = similarity.topk(min(k, num_texts), dim=1).indices
        hits_i2t = (owner[top_texts] == torch.arange(num_images, device=similarity.device)[:, None]).any(dim=1)
        top_images = similarity.T.topk(min(k, num_images), dim=1).indices
        hits_t2i = (top_images == owner[:, None]).any(dim=1)
        results[f"image_to_text_R@{k}"] = hits_i2t.float().mean().item()
        results[f"text_to_image_R@{k}"] = hits_t2i.float().mean().item()
    return results


@torch.no_grad()
def retrieval_recall(model: nn.Module, tokenizer: Callable, dataset: Any, device: torch.device,
                     batch_size: int = 256, ks: Iterable[int] = RECALL_KS) -> Dict[str, float]:
    """Recall@k both ways on a dataset of (image, list of captions)."""
    image_features, captions, owners = [], [], []
    num_images = 0
    for images, caption_lists in DataLoader(dataset, batch_size=batch_size, collate_fn=_stack_pairs):
        image_features.append(model.encode_image(images.to(device), normalize=True).float())
        for texts in caption_lists:
            captions.extend(texts)
            owners.extend([num_images] * len(texts))
            num_images += 1
    images_all = torch.cat(image_features)
    text_features = encode_texts(model, tokenizer, captions, device, batch_size)
    owner = torch.tensor(owners)
    metrics = recall_at_k(images_all @ text_features.T, owner, ks)
    metrics.update(class_level_recall(images_all.cpu(), text_features.cpu(), owner, captions, tuple(ks)))
    return metrics


def quick_evaluate(model: nn.Module, tokenizer: Callable, zero_shot_tasks: Mapping[str, Any],
                   retrieval_set: Any, device: torch.device,
                   autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> Dict[str, float]:
    """Zero-shot accuracy per task (`zeroshot_<name>`) and retrieval recalls, model in eval mode.

    `retrieval_set` is one dataset, None, or a mapping {name: dataset} whose metrics are
    prefixed `<name>/` (the name "" keeps them unprefixed).
    """
    was_training = model.training
    model.eval()
    try:
        with autocast():
            metrics = {f"zeroshot_{name}": zero_shot_accuracy(model, tokenizer, task, device)
                       for name, task in zero_shot_tasks.items()}
            sets = retrieval_set if isinstance(retrieval_set, Mapping) else {"": retrieval_set}
            for name, dataset in sets.items():
                if dataset is not None:
                    prefix = f"{name}/" if name else ""
                    metrics.update({prefix + key: value for key, value in
                                    retrieval_recall(model, tokenizer, dataset, device).items()})
    finally:
        model.train(was_training)
    return metrics
