"""Classification and ranking metrics shared by the evaluation tasks (no sklearn needed)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

# CLIP-Mamba's 26-dataset protocol: which metric each dataset reports as its main number.
DATASET_MAIN_METRIC: Dict[str, str] = {
    "fgvc_aircraft": "mean_per_class_recall",
    "pets": "mean_per_class_recall",
    "oxford_pets": "mean_per_class_recall",
    "caltech101": "mean_per_class_recall",
    "flowers": "mean_per_class_recall",
    "oxford_flowers": "mean_per_class_recall",
    "hateful_memes": "roc_auc",
    "kinetics700": "mean_top1_top5",
}


def main_metric_for(dataset_name: str) -> str:
    """The protocol metric for a dataset name (top-1 accuracy unless listed)."""
    return DATASET_MAIN_METRIC.get(dataset_name.lower().replace("-", "_"), "top1")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def mean_per_class_recall(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Average over the classes present in labels of the fraction of that class predicted right."""
    recalls = [(preds[labels == c] == c).float().mean() for c in range(num_classes) if (labels == c).any()]
    return torch.stack(recalls).mean().item()


def roc_auc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic, ties counted as half."""
    scores = scores.double().flatten()
    positives = positives.bool().flatten()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative sample")
    ranks = average_ranks(scores)
    return ((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their average rank (as scipy.stats.rankdata)."""
    order = values.argsort()
    sorted_vals = values[order]
    ranks = torch.empty_like(values, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_vals, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    return ranks


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the precision-recall curve as a step sum over distinct thresholds,
    sum_n (R_n - R_{n-1}) P_n (sklearn's average_precision_score)."""
    scores = scores.double().flatten()
    positives = positives.bool().flatten()
    n_pos = int(positives.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive sample")
    order = scores.argsort(descending=True)
    s, p = scores[order], positives[order].double()
    tp = p.cumsum(0)
    # keep the last index of every run of tied scores: a threshold admits all ties at once
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, seen = tp[last], torch.arange(1, len(s) + 1, dtype=torch.float64)[last]
    precision, recall = tp / seen, tp / n_pos
    recall_steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return (recall_steps * precision).sum().item()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, dataset_name: str = "",
                           ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """top-k accuracies, mean per-class recall, ROC-AUC for two classes, and the dataset's
    protocol metric under the key "main" (named by "main_metric")."""
    labels = labels.long()
    num_classes = logits.shape[1]
    out: Dict[str, float] = {f"top{k}": topk_accuracy(logits, labels, k) for k in ks}
    out["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(1), labels, num_classes)
    if num_classes == 2 and labels.min() != labels.max():
        out["roc_auc"] = roc_auc(logits.softmax(1)[:, 1], labels == 1)
    out["mean_top1_top5"] = (topk_accuracy(logits, labels, 1) + topk_accuracy(logits, labels, 5)) / 2
    metric = main_metric_for(dataset_name)
    if metric not in out:
        raise ValueError(f"dataset {dataset_name!r} reports {metric}, which needs two classes with both present")
    out["main"] = out[metric]
    out["main_metric"] = metric  # type: ignore[assignment]
    return out
