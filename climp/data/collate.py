"""Batching image-caption pairs: stack images, tokenize captions, drop broken samples."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Tokenizer = Callable[[List[str]], torch.Tensor]


class ImageTextCollate:
    """list of (image tensor (3, H, W), caption str) or None -> (images (B, 3, H, W),
    token ids (B, L)).

    None entries (samples a source could not load, already counted in its SkipCounter) are
    dropped; a batch with nothing left gives None, which the training loop skips. Padding
    is the tokenizer's: the climp tokenizers pad to the longest caption in the batch.

    sides: multi-resolution training; each batch is resized (antialiased bilinear) to a side
    drawn uniformly from `sides` with torch's global generator (so a resumed run draws the
    same sides). Prepare the images at the largest side, so no batch is upsampled.
    """

    def __init__(self, tokenizer: Tokenizer, sides: Optional[Sequence[int]] = None):
        self.tokenizer = tokenizer
        if sides is not None and (not sides or min(sides) < 1):
            raise ValueError(f"sides must be positive ints, got {sides}")
        self.sides = tuple(sides) if sides else None

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
        return self.resize(torch.stack(images)), tokens.long()

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """The batch at a side drawn from `sides` (unchanged without sides)."""
        if self.sides is None:
            return images
        side = self.sides[int(torch.randint(len(self.sides), ()))]
        if images.shape[-2:] == (side, side):
            return images
        return F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
