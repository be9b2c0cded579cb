"""Label-trained probe of the embedded benchmark's zero-shot tasks: an image tower (a climp model's,
or a small plain CNN as a model-side control) plus a linear head, trained with cross-entropy on
one task's labels, then scored on that task's held-out test scenes.

Where shape is needed for every sample, this measures what the tower can learn of shape in a
budget, per data setting: object scale, rotation on/off, image side. Prints one line per run.

    python benchmarks/shape_probe.py --model climp-tiny --task shape --object-scale 1.6 --steps 300
    python benchmarks/shape_probe.py --model cnn --task shape --side 128 --no-rotation
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import climp  # noqa: E402 - before torch (OMP_WAIT_POLICY)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from climp.data.synthetic import LabelledScenes, zero_shot_tasks  # noqa: E402

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def plain_cnn(num_classes: int, width: int = 32) -> nn.Module:
    """Four stride-2 3x3 conv/BN/ReLU stages, global average pooling and a linear head."""
    layers: List[nn.Module] = []
    channels = 3
    for k in range(4):
        out = width * 2 ** k
        layers += [nn.Conv2d(channels, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                   nn.Conv2d(out, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def build(model: str, num_classes: int, side: int) -> nn.Module:
    if model == "cnn":
        return plain_cnn(num_classes)
    clip = climp.create_model(model, vision_cfg={"image_size": side})
    return nn.Sequential(clip.visual, nn.Linear(clip.config["embed_dim"], num_classes))


def tensors(dataset: LabelledScenes, rotation: bool) -> tuple:
    """Every image of `dataset` rendered once, normalised as the towers expect, with its label."""
    if not rotation:
        dataset.scenes = [dataclasses.replace(s, objects=[dataclasses.replace(o, rotation=0.0) for o in s.objects])
                          for s in dataset.scenes]
    images = np.stack([np.asarray(dataset.render(i), dtype=np.float32) / 255.0 for i in range(len(dataset))])
    x = (torch.from_numpy(images).permute(0, 3, 1, 2) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x, torch.tensor(dataset.labels)


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    train = zero_shot_tasks("train", args.train_images, args.side, args.seed, object_scale=args.object_scale)[args.task]
    test = zero_shot_tasks("test", args.test_images, args.side, args.seed, object_scale=args.object_scale)[args.task]
    x_train, y_train = tensors(train.dataset, args.rotation)
    x_test, y_test = tensors(test.dataset, args.rotation)
    model = build(args.model, len(train.classnames), args.side)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(args.seed)
    losses = []
    model.train()
    for _ in range(args.steps):
        idx = torch.randint(len(x_train), (args.batch_size,), generator=g)
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_test[i:i + 200]).argmax(-1) for i in range(0, len(x_test), 200)])
    return {"model": args.model, "task": args.task, "object_scale": args.object_scale, "rotation": args.rotation,
            "side": args.side, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "accuracy": float((pred == y_test).float().mean()), "chance": 1.0 / len(train.classnames),
            "final_loss": float(np.mean(losses[-20:])), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="climp-tiny", help="a climp model name (its image tower) or 'cnn'")
    parser.add_argument("--task", default="shape", choices=("shape", "colour", "position", "count"))
    parser.add_argument("--object-scale", type=float, default=1.0)
    parser.add_argument("--rotation", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the benchmark's +-10 degree rotations (--no-rotation: upright shapes)")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--test-images", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    result = run(args)
    print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
