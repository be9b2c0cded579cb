"""Dense-caption retrieval: long captions, read in full by Mamba text towers and truncated at the
context length (keeping the end token) by Transformer towers' tokenizers."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Dict, List, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer

from .features import ImageFn
from .retrieval import encode_retrieval_set, retrieval_recall

CLIP_CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def bpe() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=None)


def caption_token_counts(captions: Sequence[str]) -> List[int]:
    """Untruncated BPE lengths, start and end tokens included."""
    return [len(bpe().encode(c)) + 2 for c in captions]


def evaluate_dense_retrieval(model: torch.nn.Module, tokenizer: Callable, dataset: Any, image_fn: ImageFn,
                             batch_size: int = 64, ks: Sequence[int] = (1, 5, 10)) -> Dict[str, Any]:
    """Retrieval R@K with long captions, plus how many captions exceed 77 tokens and whether this
    model's tokenizer truncates them (its max_length)."""
    image_feats, text_feats, owner, texts = encode_retrieval_set(model, tokenizer, dataset, image_fn, batch_size,
                                                                 desc="dense")
    counts = torch.tensor(caption_token_counts(texts))
    max_length = getattr(tokenizer, "max_length", None)
    out: Dict[str, Any] = retrieval_recall(image_feats, text_feats, owner, ks)
    out.update(
        num_images=len(image_feats),
        num_captions=len(texts),
        captions_over_77_tokens=int((counts > CLIP_CONTEXT_LENGTH).sum()),
        mean_caption_tokens=counts.float().mean().item(),
        max_caption_tokens=int(counts.max()),
        tokenizer_max_length=max_length,
        captions_truncated=int((counts > max_length).sum()) if max_length else 0,
    )
    return out
