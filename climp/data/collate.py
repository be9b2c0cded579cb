"""Batching image-caption pairs: stack images, tokenize captions, drop broken samples."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

Tokenizer = Callable[[List[str]], torch.Tensor]


class ImageTextCollate:
    """list of (image tensor (3, H, W), caption str) or None -> (images (B, 3, H, W),
    token ids (B, L)).

    None entries (samples a source could not load, already counted in its SkipCounter) are
    dropped; a batch with nothing left gives None, which the training loop skips. Padding
    is the tokenizer's: the climp tokenizers pad to the longest caption in the batch.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: Sequence[Optional[Tuple[torch.Tensor, str]]]
                 ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        kept = [sample for sample in batch if sample is not None]
        if not kept:
            return None
        images, captions = zip(*kept)
        for image in images:
            if not isinstance(image, torch.Tensor):
                raise ValueError(f"ImageTextCollate needs image tensors, got "
                                 f"{type(image).__name__}; give the dataset a transform")
        if len({tuple(image.shape) for image in images}) > 1:
            raise ValueError(f"images in a batch differ in shape: "
                             f"{sorted({tuple(image.shape) for image in images})}")
        for caption in captions:
            if not isinstance(caption, str):
                raise ValueError(f"captions must be str, got {type(caption).__name__}")
        tokens = self.tokenizer(list(captions))
        if tokens.dim() != 2 or tokens.shape[0] != len(captions):
            raise ValueError(f"tokenizer returned shape {tuple(tokens.shape)} for "
                             f"{len(captions)} captions; expected (batch, length)")
        return torch.stack(images), tokens.long()
