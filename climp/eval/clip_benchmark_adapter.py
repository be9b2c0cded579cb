"""Load a CLIMP model the way CLIP_benchmark loads open_clip models.

CLIP_benchmark's zero-shot and retrieval code needs `model.encode_image(images)`,
`model.encode_text(tokens)`, an image transform and a tokenizer; this returns those in
open_clip's `create_model_and_transforms` / `get_tokenizer` shape.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch


def load_for_clip_benchmark(model_name: str, pretrained: Optional[str] = None, device: str = "cpu",
                            cache_dir: Optional[str] = None) -> Tuple[torch.nn.Module, Callable, Callable]:
    """(model in eval mode on device, eval image transform, tokenizer), as CLIP_benchmark's model
    loaders return; `cache_dir` is accepted for its loader signature and unused (nothing downloads)."""
    import climp
    model, _, transform = climp.create_model_and_transforms(model_name, pretrained=pretrained)
    return model.to(device).eval(), transform, climp.get_tokenizer(model)


def register_with_clip_benchmark(model_type: str = "climp") -> None:
    """Make `clip_benchmark.models.load_clip(model_type="climp", ...)` (and its CLI's
    `--model_type climp`, when run in this process) build CLIMP models."""
    from clip_benchmark import models
    models.TYPE2FUNC[model_type] = load_for_clip_benchmark
    if model_type not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(model_type)
