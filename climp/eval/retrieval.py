"""Image-text retrieval with several captions per image: R@K both ways."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .features import ImageFn, encode_dataset, encode_texts

log = logging.getLogger(__name__)


def recall_from_positives(sim: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                          prefix: str = "") -> Dict[str, float]:
    """Recall@K both ways from a (texts, images) similarity and a (texts, images) bool matrix of
    matching pairs: a caption hits when a matching image is among its K most similar images, an
    image when a matching caption is among its K most similar captions."""
    out: Dict[str, float] = {}
    for k in ks:
        top_images = sim.topk(min(k, sim.shape[1]), dim=1).indices
        out[f"{prefix}text_to_image_R@{k}"] = positives.gather(1, top_images).any(1).float().mean().item()
        top_texts = sim.T.topk(min(k, sim.shape[0]), dim=1).indices
        out[f"{prefix}image_to_text_R@{k}"] = positives.T.gather(1, top_texts).any(1).float().mean().item()
    return out


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
    return recall_from_positives(sim, positives, ks)


def same_text_positives(texts: Sequence[str], text_to_image: torch.Tensor, num_images: int
                        ) -> Tuple[Optional[torch.Tensor], int]:
    """((texts, images) bool matrix: caption t matches every image having a caption with t's exact
    text, number of caption texts shared by several images); (None, 0) when none is shared."""
    images_of: Dict[str, set] = {}
    for text, image in zip(texts, text_to_image.tolist()):
        images_of.setdefault(text, set()).add(image)
    shared = sum(len(images) > 1 for images in images_of.values())
    if not shared:
        return None, 0
    positives = torch.zeros(len(texts), num_images, dtype=torch.bool)
    for t, text in enumerate(texts):
        positives[t, sorted(images_of[text])] = True
    return positives, shared


def class_level_recall(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                       texts: Sequence[str], ks: Sequence[int] = (1, 5, 10), name: str = "retrieval"
                       ) -> Dict[str, float]:
    """When one caption text belongs to several images (class-style captions), instance R@K is
    meaningless (the right caption text is there several times, tied); then warn and return
    `class_*` recalls where any image sharing the caption's text counts, plus the number of
    shared texts. {} when every caption text is unique to one image."""
    positives, shared = same_text_positives(texts, text_to_image, len(image_features))
    if positives is None:
        return {}
    log.warning("%s: %d caption text(s) belong to several images; instance-level R@K is not meaningful "
                "there, see the class-level class_*_R@K", name, shared)
    out = recall_from_positives(text_features @ image_features.T, positives, ks, prefix="class_")
    out["shared_caption_texts"] = shared
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
    image_feats, text_feats, owner, texts = encode_retrieval_set(model, tokenizer, dataset, image_fn, batch_size)
    out: Dict[str, Any] = retrieval_recall(image_feats, text_feats, owner, ks)
    out.update(class_level_recall(image_feats, text_feats, owner, texts, ks))
    out.update(num_images=len(image_feats), num_captions=len(text_feats))
    return out
