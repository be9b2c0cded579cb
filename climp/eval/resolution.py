"""Resolution scaling without retraining: accuracy, FLOPs and peak memory at multiples of the
training side (1x, 2x, 4x side = 1x, 4x, 16x pixels). ViT towers interpolate their position
embeddings to the input size; VMamba towers take any size as they are."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch

from .efficiency import count_flops, measure_peak_memory, placed
from .features import ImageFn
from .retrieval import evaluate_retrieval
from .zeroshot import evaluate_zero_shot


def image_tower_cost(model: torch.nn.Module, side: int) -> Dict[str, Any]:
    """FLOPs per image (meta device) and peak activation memory at batch 1 for side x side input."""
    visual = model.visual
    device = next(visual.parameters()).device
    flops = count_flops(placed(visual, "meta"), torch.zeros(1, 3, side, side, device="meta"))["flops"]
    memory = measure_peak_memory(visual, torch.zeros(1, 3, side, side, device=device))
    return {"flops_per_image": flops, **{k: v for k, v in memory.items() if k != "input_bytes"}}


def evaluate_resolution(model: torch.nn.Module, tokenizer: Callable, base_side: int, scales: Sequence[int],
                        make_task: Optional[Callable[[int], Any]], image_fn_for_side: Callable[[int], ImageFn],
                        make_retrieval: Optional[Callable[[int], Any]] = None,
                        batch_size: int = 64) -> Dict[str, Any]:
    """Per side: zero-shot top-1 on make_task(side), R@1 on make_retrieval(side), FLOPs, memory.

    make_task / make_retrieval build the data at a side (the embedded benchmark renders natively;
    either may be None); image_fn_for_side(side) maps a sample image to normalised pixels of that
    side. Each row also gives its R@1 and top-1 relative to the 1x side's (`*_vs_1x`)."""
    if make_task is None and make_retrieval is None:
        raise ValueError("evaluate_resolution needs a zero-shot task or a retrieval set")
    out: Dict[str, Any] = {"base_side": base_side, "sides": {}}
    first: Dict[str, float] = {}
    for scale in scales:
        side = base_side * scale
        image_fn = image_fn_for_side(side)
        row: Dict[str, Any] = {"scale": scale, "pixels_ratio": scale ** 2}
        if make_task is not None:
            row["zero_shot_top1"] = evaluate_zero_shot(model, tokenizer, make_task(side), image_fn,
                                                       batch_size)["top1"]
        if make_retrieval is not None:
            r = evaluate_retrieval(model, tokenizer, make_retrieval(side), image_fn, batch_size, ks=(1,))
            row["text_to_image_R@1"] = r["text_to_image_R@1"]
            row["image_to_text_R@1"] = r["image_to_text_R@1"]
        for key in ("zero_shot_top1", "text_to_image_R@1", "image_to_text_R@1"):
            if key in row:
                first.setdefault(key, row[key])
                row[f"{key}_vs_1x"] = row[key] / first[key] if first[key] > 0 else float("nan")
        row.update(image_tower_cost(model, side))
        out["sides"][str(side)] = row
    return out
