"""The CLIP-specific side of the Hessian analysis: the contrastive loss of a climp model and
fixed batches of the embedded benchmark to take it over."""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

Batch = Tuple[torch.Tensor, torch.Tensor]


class ContrastiveLoss:
    """loss_fn(model, (images, token_ids)) -> scalar for any model whose forward returns
    open_clip's dict (image_features, text_features, logit_scale, logit_bias): SigLipLoss when
    the model has a logit bias, ClipLoss otherwise (single process, no gathering)."""

    def __init__(self) -> None:
        self.clip = ClipLoss()
        self.siglip = SigLipLoss()

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        images, token_ids = batch
        out = model(images, token_ids)
        if out.get("logit_bias") is not None:
            return self.siglip(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
        return self.clip(out["image_features"], out["text_features"], out["logit_scale"])


def make_batches(
    samples: Sequence[Tuple[object, str]],
    preprocess: Callable[[object], torch.Tensor],
    tokenizer: Callable[[List[str]], torch.Tensor],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> List[Batch]:
    """Group (PIL image, caption) samples into (images, token_ids) batches; the last partial
    batch is dropped so every batch has the same size (contrastive losses depend on it)."""
    if batch_size < 2:
        raise ValueError(f"contrastive batches need batch_size >= 2, got {batch_size}")
    if len(samples) < batch_size:
        raise ValueError(f"{len(samples)} samples cannot fill one batch of {batch_size}")
    batches = []
    for start in range(0, len(samples) - batch_size + 1, batch_size):
        chunk = samples[start:start + batch_size]
        images = torch.stack([preprocess(image) for image, _ in chunk]).to(device)
        token_ids = tokenizer([caption for _, caption in chunk]).to(device)
        batches.append((images, token_ids))
    return batches


def synthetic_samples(num_samples: int, resolution: int, seed: int, caption_style: str = "short") -> List[Tuple[object, str]]:
    """The first num_samples (PIL image, caption) pairs of the embedded benchmark's train split."""
    from climp.data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(split="train", num_samples=num_samples, resolution=resolution,
                             seed=seed, caption_style=caption_style)
    return [scenes[i] for i in range(num_samples)]
