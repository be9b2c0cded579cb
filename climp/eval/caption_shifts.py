"""Text-side robustness: retrieval with the same captions written differently (trailing
punctuation, case, spacing), and how far each rewrite moves the text features.

A caption's format carries no meaning, so a robust text tower retrieves the same images and
keeps each caption's feature in place (cosine 1 to the original's). Models that pool one token
(a Mamba tower's last token) can hinge on the final punctuation mark.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Mapping, Sequence

import torch

from .features import ImageFn, encode_dataset, encode_texts
from .retrieval import flatten_captions, retrieval_recall

_TRAILING_PUNCT = re.compile(r"[\s.!?,;:]+$")


def _stem(text: str) -> str:
    """The caption without trailing punctuation and spaces."""
    return _TRAILING_PUNCT.sub("", text)


CAPTION_SHIFTS: Mapping[str, Callable[[str], str]] = {
    "original": lambda t: t,
    "no_full_stop": _stem,
    "full_stop": lambda t: _stem(t) + ".",
    "exclamation": lambda t: _stem(t) + "!",
    "space_full_stop": lambda t: _stem(t) + " .",
    "lower_case": str.lower,
    "upper_case": str.upper,
    "extra_spaces": lambda t: "  " + "  ".join(t.split()) + "  ",
}


def shift_caption(name: str, text: str) -> str:
    if name not in CAPTION_SHIFTS:
        raise ValueError(f"unknown caption shift {name!r}; choose from {list(CAPTION_SHIFTS)}")
    return CAPTION_SHIFTS[name](text)


@torch.no_grad()
def evaluate_caption_shifts(model: torch.nn.Module, tokenizer: Callable, dataset: Any, image_fn: ImageFn,
                            batch_size: int = 64, shifts: Sequence[str] = tuple(CAPTION_SHIFTS),
                            ks: Sequence[int] = (1,)) -> Dict[str, Any]:
    """Per shift: R@K both ways with every caption rewritten, and the mean and minimum cosine
    between each rewritten caption's feature and its original's (dataset yields (image, captions))."""
    for name in shifts:
        shift_caption(name, "x")
    image_feats, columns = encode_dataset(model, dataset, image_fn, batch_size, desc="caption-shift images")
    texts, owner = flatten_captions(columns[0])
    original = encode_texts(model, tokenizer, texts, desc="captions")
    out: Dict[str, Any] = {"num_images": len(image_feats), "num_captions": len(texts), "shifts": {}}
    for name in shifts:
        feats = encode_texts(model, tokenizer, [shift_caption(name, t) for t in texts], desc=name)
        cosine = (feats * original).sum(-1)
        row = retrieval_recall(image_feats, feats, owner, ks)
        row.update(cosine_mean=cosine.mean().item(), cosine_min=cosine.min().item())
        out["shifts"][name] = row
    base = out["shifts"].get("original")
    if base is not None:
        for row in out["shifts"].values():
            for k in ks:
                for key in (f"text_to_image_R@{k}", f"image_to_text_R@{k}"):
                    row[f"{key}_vs_original"] = row[key] / base[key] if base[key] > 0 else float("nan")
    return out
