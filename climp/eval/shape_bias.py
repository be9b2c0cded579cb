"""Shape bias on cue-conflict images: shape hits / (shape hits + texture hits) (Geirhos et al.)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from climp.data.images import load_image

from .features import ImageFn, Template
from .zeroshot import zero_shot_logits

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def shape_bias(preds: torch.Tensor, shape_labels: torch.Tensor, texture_labels: torch.Tensor) -> Dict[str, Any]:
    """Shape bias over images whose shape and texture classes differ (as Geirhos excludes the rest)."""
    conflict = shape_labels != texture_labels
    if not conflict.any():
        raise ValueError("no cue-conflict images: every shape label equals its texture label")
    p, s, t = preds[conflict], shape_labels[conflict], texture_labels[conflict]
    shape_hits, texture_hits = int((p == s).sum()), int((p == t).sum())
    decided = shape_hits + texture_hits
    return {
        "shape_bias": shape_hits / decided if decided else float("nan"),
        "shape_accuracy": shape_hits / len(p),
        "texture_accuracy": texture_hits / len(p),
        "num_conflict_images": len(p),
    }


def parse_cue_conflict_name(filename: str) -> Tuple[str, str]:
    """'airplane1-bicycle2.png' -> ('airplane', 'bicycle'): shape class, texture class."""
    stem = Path(filename).stem
    parts = stem.split("-")
    if len(parts) != 2:
        raise ValueError(f"cue-conflict file name must look like 'shape1-texture2.png', got {filename!r}")
    shape, texture = (re.sub(r"\d+$", "", p) for p in parts)
    return shape, texture


class CueConflictFolder:
    """Geirhos' cue-conflict layout: <root>/<shape class>/<shape><i>-<texture><j>.png.

    Yields (PIL image, shape label, texture label) over the sorted class names."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"cue-conflict root {self.root} is not a directory")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images under cue-conflict root {self.root}")
        pairs = [parse_cue_conflict_name(p.name) for p in files]
        self.classnames: List[str] = sorted({c for pair in pairs for c in pair})
        index = {c: i for i, c in enumerate(self.classnames)}
        self.samples = [(f, index[s], index[t]) for f, (s, t) in zip(files, pairs)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, shape, texture = self.samples[i]
        return load_image(path), shape, texture


def evaluate_shape_bias(model: torch.nn.Module, tokenizer: Callable, dataset: Any, classnames: Sequence[str],
                        templates: Sequence[Template], image_fn: ImageFn, batch_size: int = 64) -> Dict[str, Any]:
    """Zero-shot predictions over the classes, scored by shape bias."""
    logits, shape_labels, extra = zero_shot_logits(model, tokenizer, classnames, templates, dataset, image_fn,
                                                   batch_size, desc="cue-conflict")
    if not extra:
        raise ValueError("cue-conflict dataset must yield (image, shape label, texture label)")
    texture_labels = torch.as_tensor([int(v) for v in extra[0]])
    return shape_bias(logits.argmax(1), shape_labels, texture_labels)
