"""Batched encoding of images and texts into L2-normalised embeddings (with tqdm progress, off
inside `no_progress()`).

Images travel as float pixels in [0, 1] until the last step, so image shifts and resolution
changes can act on them before CLIP's normalisation.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from tqdm import tqdm

from climp.data.images import to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageFn = Callable[[Any], torch.Tensor]
_QUIET = contextvars.ContextVar("climp_eval_quiet", default=False)
Template = Union[str, Callable[[str], str]]


def pixels_from_image(image: Any) -> torch.Tensor:
    """PIL image, HWC uint8 array, or CHW tensor (uint8 or float in [0, 1]) -> float (3, H, W)."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3:
            raise ValueError(f"image tensor must be (C, H, W), got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if image.shape[0] != 3:
            raise ValueError(f"image must have 1 or 3 channels, got {image.shape[0]}")
        return image.float()
    return v2.functional.to_dtype(v2.functional.to_image(to_rgb(image)), torch.float32, scale=True)


def clip_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's mean/std normalisation of float pixels in [0, 1]."""
    return v2.functional.normalize(pixels, list(CLIP_MEAN), list(CLIP_STD))


def split_preprocess(preprocess: Callable) -> Tuple[Callable, Callable]:
    """Split a torchvision Compose ending in Normalize into (to_pixels, normalize).

    Image shifts are defined on pixels in [0, 1], so they must run between the two halves.
    """
    steps = getattr(preprocess, "transforms", None)
    if not steps or type(steps[-1]).__name__ != "Normalize":
        raise ValueError("preprocess must be a torchvision Compose whose last step is Normalize, "
                         f"got {preprocess!r}")
    head = type(preprocess)(list(steps[:-1]))
    return (lambda image: pixels_from_image(head(image))), steps[-1]


def image_pipeline(to_pixels: Callable = pixels_from_image, normalize: Callable = clip_normalize,
                   pixel_op: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> ImageFn:
    """Compose to_pixels -> optional pixel-space op (a shift, a resize) -> normalize."""
    def run(image: Any) -> torch.Tensor:
        pixels = to_pixels(image)
        if pixel_op is not None:
            pixels = pixel_op(pixels)
        return normalize(pixels)
    return run


def iterate_samples(dataset: Iterable) -> Iterator:
    """Samples of a map-style (len + getitem) or iterable dataset, in order."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return (dataset[i] for i in range(len(dataset)))
    return iter(dataset)


def batched(items: Iterable, size: int) -> Iterator[list]:
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def no_progress() -> Iterator[None]:
    """Encode without progress bars inside this block (evaluation inside a training run)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def encode_dataset(model: torch.nn.Module, dataset: Iterable, image_fn: ImageFn, batch_size: int = 64,
                   desc: str = "images") -> Tuple[torch.Tensor, List[list]]:
    """Encode every sample's image (first element); return (features (N, E) normalised, the other
    elements of each sample as columns)."""
    device = model_device(model)
    feats, columns = [], None
    total = len(dataset) if hasattr(dataset, "__len__") else None
    with tqdm(total=total, desc=desc, leave=False, disable=_QUIET.get()) as bar:
        for batch in batched(iterate_samples(dataset), batch_size):
            images = torch.stack([image_fn(sample[0]) for sample in batch]).to(device)
            feats.append(F.normalize(model.encode_image(images).float(), dim=-1).cpu())
            rest = [list(sample[1:]) for sample in batch]
            if columns is None:
                columns = [[] for _ in rest[0]]
            for row in rest:
                for col, value in zip(columns, row):
                    col.append(value)
            bar.update(len(batch))
    if not feats:
        raise ValueError(f"dataset {desc!r} is empty")
    return torch.cat(feats), columns or []


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str], batch_size: int = 256,
                 desc: str = "texts") -> torch.Tensor:
    """Tokenise and encode texts in batches; returns (N, E) L2-normalised features."""
    if not texts:
        raise ValueError("no texts to encode")
    device = model_device(model)
    out = []
    for chunk in tqdm(list(batched(texts, batch_size)), desc=desc, leave=False, disable=_QUIET.get()):
        ids = tokenizer(list(chunk)).to(device)
        out.append(F.normalize(model.encode_text(ids).float(), dim=-1).cpu())
    return torch.cat(out)


def fill_template(template: Template, classname: str) -> str:
    """Templates are strings with "{c}" (CLIP_benchmark) or "{}", or callables (open_clip)."""
    return template(classname) if callable(template) else template.format(classname, c=classname)


def class_embeddings(model: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str],
                     templates: Sequence[Template], batch_size: int = 256) -> torch.Tensor:
    """Zero-shot classifier weights (C, E): per class, the mean of its normalised prompt
    embeddings over templates, re-normalised (CLIP's prompt ensembling)."""
    if not classnames or not templates:
        raise ValueError("zero-shot needs at least one class name and one template")
    prompts = [fill_template(t, c) for c in classnames for t in templates]
    feats = encode_texts(model, tokenizer, prompts, batch_size, desc="class prompts")
    feats = feats.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


def logit_scale_of(model: torch.nn.Module) -> float:
    """exp(logit_scale) as a float, 100 when the model has none."""
    scale = getattr(model, "logit_scale", None)
    return float(scale.detach().exp()) if scale is not None else 100.0
