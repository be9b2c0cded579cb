"""Batching image-caption pairs: stack images, tokenize captions (capped at a maximum token
length), drop skipped samples and say which."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .sources import Skipped

Tokenizer = Callable[[List[str]], torch.Tensor]
CHARS_PER_TOKEN_BOUND = 64  # captions are cut to max_tokens * this many characters before BPE


class Batch(tuple):
    """(images (B, 3, H, W), token ids (B, L)), or () when nothing in the batch could be used,
    with `skipped` (the `Skipped` markers dropped from it) and `truncated` (how many captions
    were cut to the maximum token length)."""

    def __new__(cls, items: Sequence = (), skipped: Sequence[Skipped] = (), truncated: int = 0):
        batch = super().__new__(cls, items)
        batch.skipped = tuple(skipped)
        batch.truncated = truncated
        return batch

    def __reduce__(self):
        return Batch, (tuple(self), self.skipped, self.truncated)


def truncate_token_rows(tokens: torch.Tensor, max_tokens: int, pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cut rows longer than max_tokens to their first max_tokens - 1 ids plus their last id (the
    end-of-text token the text towers pool), then drop all-padding columns.

    Returns (tokens, mask of the rows that were cut). A row's length is its last non-pad id.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (start/end tokens), got {max_tokens}")
    positions = torch.arange(tokens.shape[1])
    last = torch.where(tokens.ne(pad_id), positions, -1).max(dim=1).values
    cut = last + 1 > max_tokens
    if not cut.any():
        return tokens, cut
    out = tokens[:, :max_tokens].clone()
    out[cut, max_tokens - 1] = tokens[cut, last[cut]]
    return out, cut


def tokenize_capped(tokenizer: Tokenizer, texts: List[str], max_tokens: Optional[int]) -> Tuple[torch.Tensor, int]:
    """Token ids of `texts`, no row longer than max_tokens (None: no cap), and how many were cut."""
    if not max_tokens:
        return tokenizer(texts), 0
    limit = max_tokens * CHARS_PER_TOKEN_BOUND
    cut_chars = torch.tensor([len(t) > limit for t in texts])
    tokens = tokenizer([t[:limit] for t in texts])
    tokens, cut = truncate_token_rows(tokens, max_tokens, getattr(tokenizer, "pad_id", 0))
    return tokens, int((cut | cut_chars).sum())


class TruncatingTokenizer:
    """A tokenizer wrapped to cap every caption at max_tokens (for evaluation as in training);
    `truncated` counts the captions it cut."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: Optional[int]):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.pad_id = getattr(tokenizer, "pad_id", 0)
        self.truncated = 0

    def __call__(self, texts) -> torch.Tensor:
        tokens, cut = tokenize_capped(self.tokenizer, [texts] if isinstance(texts, str) else list(texts),
                                      self.max_tokens)
        self.truncated += cut
        return tokens

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "tokenizer":
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


class ImageTextCollate:
    """list of (image tensor (3, H, W), caption str), `Skipped` markers or None -> `Batch`.

    Markers (samples a source could not load) and None are dropped and the markers listed on
    the batch (`batch.skipped`), so the main process can count them even when they were met in
    a DataLoader worker; a batch with nothing left is empty. Captions are capped at
    `max_tokens` (None: no cap) and padded to the longest caption in the batch.

    sides: multi-resolution training; each batch is resized (antialiased bilinear) to a side
    drawn uniformly from `sides` with torch's global generator (so a resumed run draws the
    same sides). Prepare the images at the largest side, so no batch is upsampled.
    """

    def __init__(self, tokenizer: Tokenizer, max_tokens: Optional[int] = None,
                 sides: Optional[Sequence[int]] = None):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        if sides is not None and (not sides or min(sides) < 1):
            raise ValueError(f"sides must be positive ints, got {sides}")
        self.sides = tuple(sides) if sides else None

    def __call__(self, batch: Sequence[Optional[Tuple[torch.Tensor, str]]]) -> Batch:
        skipped = [sample for sample in batch if isinstance(sample, Skipped)]
        kept = [sample for sample in batch if sample is not None and not isinstance(sample, Skipped)]
        if not kept:
            return Batch((), skipped)
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
        tokens, truncated = tokenize_capped(self.tokenizer, list(captions), self.max_tokens)
        if tokens.dim() != 2 or tokens.shape[0] != len(captions):
            raise ValueError(f"tokenizer returned shape {tuple(tokens.shape)} for "
                             f"{len(captions)} captions; expected (batch, length)")
        return Batch((self.resize(torch.stack(images)), tokens.long()), skipped, truncated)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """The batch at a side drawn from `sides` (unchanged without sides)."""
        if self.sides is None:
            return images
        side = self.sides[int(torch.randint(len(self.sides), ()))]
        if images.shape[-2:] == (side, side):
            return images
        return F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
