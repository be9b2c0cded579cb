"""What a trained image tower encodes: how far its embedding moves when one attribute of a scene
changes and everything else stays fixed.

For --scenes random single-object scenes, each attribute (shape, colour, position, size,
background) is varied over all its values with the other attributes and the random placement
kept, and the mean pairwise cosine between the resulting image embeddings is reported: near 1
means the tower does not see that attribute, lower means it does. A tower that matches captions
by an attribute must move with it; one that stays near 1 for the object's attributes and moves
only with the background has learned the background alone.

python benchmarks/attribute_probe.py --model climp-tiny-paper --checkpoint RUN_DIR [--scenes 20]
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import climp
from climp.data import scenes
from climp.eval.features import clip_normalize, pixels_from_image

ATTRIBUTES: Dict[str, Sequence] = {
    "shape": scenes.SHAPES,
    "colour": scenes.COLOURS,
    "position": range(9),
    "size": scenes.SIZES,
    "background": scenes.BACKGROUNDS,
}


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine over distinct pairs of rows of L2-normalised embeddings."""
    n = embeddings.shape[0]
    cosines = embeddings @ embeddings.T
    return float(cosines[~torch.eye(n, dtype=torch.bool)].mean())


def attribute_cosines(model: torch.nn.Module, side: int, num_scenes: int, seed: int = 0) -> Dict[str, float]:
    """{attribute: mean over scenes of the mean pairwise embedding cosine across its values}."""
    rng = np.random.default_rng(seed)
    per_attribute: Dict[str, List[float]] = {name: [] for name in ATTRIBUTES}
    for _ in range(num_scenes):
        scene_seed = int(rng.integers(1 << 31))
        fixed = scenes.sample_single(np.random.default_rng(scene_seed))
        obj = fixed.objects[0]
        base = dict(shape=obj.shape, colour=obj.colour, position=obj.row * 3 + obj.col, size=obj.size,
                    background=fixed.background)
        for name, values in ATTRIBUTES.items():
            varied = [scenes.sample_single(np.random.default_rng(scene_seed), **{**base, name: value})
                      for value in values]
            pixels = torch.stack([clip_normalize(pixels_from_image(scenes.render_scene(s, side))) for s in varied])
            with torch.no_grad():
                embeddings = F.normalize(model.encode_image(pixels), dim=-1)
            per_attribute[name].append(mean_pairwise_cosine(embeddings))
    return {name: float(np.mean(values)) for name, values in per_attribute.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model name or config file")
    parser.add_argument("--checkpoint", default=None, help="trained weights (default: random init)")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--side", type=int, default=None, help="image side (default: the tower's)")
    parser.add_argument("--seed", type=int, default=0, help="scenes and, without a checkpoint, the init")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.manual_seed(args.seed)  # the initialisation, when no checkpoint is given
    model, _, _ = climp.create_model_and_transforms(args.model, pretrained=args.checkpoint)
    model.eval()
    side = args.side or model.config["vision_cfg"]["image_size"]
    result = {"model": args.model, "checkpoint": args.checkpoint, "side": side, "scenes": args.scenes,
              "mean_pairwise_cosine": attribute_cosines(model, side, args.scenes, args.seed)}
    print("| attribute varied | mean pairwise cosine of image embeddings |")
    print("|---|---|")
    for name, value in result["mean_pairwise_cosine"].items():
        print(f"| {name} | {value:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
