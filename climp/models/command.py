"""`climp models`: the registry at a glance (parameters counted on the meta device)."""
from __future__ import annotations

import argparse

import torch

from .factory import create_model, list_models


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        rows.append({
            "model": name,
            "image_tower": model.config["vision_cfg"]["type"],
            "text_tower": model.config["text_cfg"]["type"],
            "image_params_M": round(count_parameters(model.visual) / 1e6, 2),
            "text_params_M": round(count_parameters(model.text) / 1e6, 2),
        })
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':34s} {'image':>8s} {'text':>12s} {'image M':>9s} {'text M':>9s}"
    print(header)
    for r in rows:
        print(f"{r['model']:34s} {r['image_tower']:>8s} {r['text_tower']:>12s} "
              f"{r['image_params_M']:9.2f} {r['text_params_M']:9.2f}")
    return 0
