"""OOD detection in the ImageNet-O protocol: maximum softmax probability over the in-distribution
class prompts; anomalies are the positives (score = -MSP); AUPR and AUROC."""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import torch

from .features import ImageFn, Template, class_embeddings, encode_dataset, logit_scale_of
from .metrics import average_precision, roc_auc


def max_softmax_probability(logits: torch.Tensor) -> torch.Tensor:
    """MSP of logits already multiplied by the model's logit scale."""
    return logits.softmax(dim=1).max(dim=1).values


def ood_metrics(in_msp: torch.Tensor, ood_msp: torch.Tensor) -> Dict[str, float]:
    """AUPR and AUROC with OOD samples as positives scored by -MSP."""
    scores = -torch.cat([in_msp, ood_msp])
    is_ood = torch.cat([torch.zeros(len(in_msp), dtype=torch.bool), torch.ones(len(ood_msp), dtype=torch.bool)])
    return {"aupr": average_precision(scores, is_ood), "auroc": roc_auc(scores, is_ood),
            "num_in_distribution": len(in_msp), "num_ood": len(ood_msp)}


@torch.no_grad()
def evaluate_ood_detection(model: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str],
                           templates: Sequence[Template], in_dataset: Any, ood_dataset: Any,
                           in_image_fn: ImageFn, ood_image_fn: ImageFn, batch_size: int = 64) -> Dict[str, Any]:
    """Score in-distribution and OOD images against the in-distribution class prompts."""
    weights = class_embeddings(model, tokenizer, classnames, templates)
    scale = logit_scale_of(model)
    msp = []
    for name, data, fn in (("in-distribution", in_dataset, in_image_fn), ("ood", ood_dataset, ood_image_fn)):
        feats, _ = encode_dataset(model, data, fn, batch_size, desc=name)
        msp.append(max_softmax_probability(scale * feats @ weights.T))
    return ood_metrics(*msp)
