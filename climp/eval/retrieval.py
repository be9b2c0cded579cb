"""Image-text retrieval with several captions per image: R@K both ways."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

from .features import ImageFn, encode_dataset, encode_texts


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """Recall@K as CLIP_benchmark computes it.

    text-to-image: a caption hits when its image is among the K most similar images;
    image-to-text: an image hits when any of its captions is among the K most similar captions.
    """
    if len(text_to_image) != len(text_features):
        raise ValueError(f"{len(text_features)} captions but {len(text_to_image)} caption->image indices")
    sim = text_features @ image_features.T  # (T, I)
    positives = torch.zeros_like(sim, dtype=torch.bool)
    positives[torch.arange(len(text_to_image)), text_to_image] = True
    out: Dict[str, float] = {}
    for k in ks:
        top_images = sim.topk(min(k, sim.shape[1]), dim=1).indices
        out[f"text_to_image_R@{k}"] = positives.gather(1, top_images).any(1).float().mean().item()
        top_texts = sim.T.topk(min(k, sim.shape[0]), dim=1).indices
        out[f"image_to_text_R@{k}"] = positives.T.gather(1, top_texts).any(1).float().mean().item()
    return out


def flatten_captions(caption_lists: Sequence[Sequence[str]]) -> Tuple[List[str], torch.Tensor]:
    """All captions in order, with the index of the image each belongs to."""
    texts, owner = [], []
    for i, caps in enumerate(caption_lists):
        if isinstance(caps, str):
            caps = [caps]
        if not caps:
            raise ValueError(f"image {i} has no captions")
        texts.extend(caps)
        owner.extend([i] * len(caps))
    return texts, torch.tensor(owner)


def encode_retrieval_set(model: torch.nn.Module, tokenizer: Callable, dataset: Any, image_fn: ImageFn,
                         batch_size: int = 64, desc: str = "retrieval"
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[str]]:
    """(image features, text features, caption->image index, captions) of a dataset yielding
    (image, list of captions)."""
    image_feats, columns = encode_dataset(model, dataset, image_fn, batch_size, desc=f"{desc} images")
    if not columns:
        raise ValueError(f"{desc}: dataset must yield (image, captions) pairs")
    texts, owner = flatten_captions(columns[0])
    text_feats = encode_texts(model, tokenizer, texts, desc=f"{desc} captions")
    return image_feats, text_feats, owner, texts


def evaluate_retrieval(model: torch.nn.Module, tokenizer: Callable, dataset: Any, image_fn: ImageFn,
                       batch_size: int = 64, ks: Sequence[int] = (1, 5, 10)) -> Dict[str, Any]:
    image_feats, text_feats, owner, _ = encode_retrieval_set(model, tokenizer, dataset, image_fn, batch_size)
    out: Dict[str, Any] = retrieval_recall(image_feats, text_feats, owner, ks)
    out.update(num_images=len(image_feats), num_captions=len(text_feats))
    return out
