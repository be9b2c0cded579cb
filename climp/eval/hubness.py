"""Hubness: skewness of the k-occurrence distribution of text-to-image nearest neighbours.

N_k(x) counts how often image x is among the k nearest images of the text queries; a strongly
right-skewed N_k means a few "hub" images crowd the neighbour lists of many queries.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from .features import ImageFn
from .retrieval import encode_retrieval_set


def k_occurrence(query_features: torch.Tensor, gallery_features: torch.Tensor, k: int = 10) -> torch.Tensor:
    """N_k for every gallery item: (G,) counts of appearances in the queries' top-k lists."""
    if not 1 <= k <= len(gallery_features):
        raise ValueError(f"k must lie in [1, {len(gallery_features)}], got {k}")
    top = (query_features @ gallery_features.T).topk(k, dim=1).indices
    return torch.bincount(top.flatten(), minlength=len(gallery_features))


def skewness(values: torch.Tensor) -> float:
    """Population skewness E[(x - mu)^3] / sigma^3 (scipy.stats.skew with bias=True)."""
    x = values.double()
    dev = x - x.mean()
    var = (dev ** 2).mean()
    if var == 0:
        return 0.0
    return ((dev ** 3).mean() / var ** 1.5).item()


def evaluate_hubness(model: torch.nn.Module, tokenizer: Callable, dataset: Any, image_fn: ImageFn,
                     batch_size: int = 64, k: int = 10) -> Dict[str, Any]:
    image_feats, text_feats, _, _ = encode_retrieval_set(model, tokenizer, dataset, image_fn, batch_size,
                                                         desc="hubness")
    counts = k_occurrence(text_feats, image_feats, k)
    return {
        "k": k,
        "k_occurrence_skewness": skewness(counts),
        "max_k_occurrence": int(counts.max()),
        "fraction_never_retrieved": (counts == 0).float().mean().item(),
        "num_images": len(image_feats),
        "num_queries": len(text_feats),
    }
