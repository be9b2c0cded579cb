"""`climp bench`: FLOPs, peak memory and throughput of image towers across resolutions and text
towers across lengths, for several models in one run, with ratios and log-log plots.

`--claim` reproduces CLIMP's efficiency claim: VMamba-B vs ViT-B/16 image towers at 224 and 896
pixels (16x the training pixels), FLOPs counted on the meta device and memory at batch 1."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

import torch

from .efficiency import profile_tower, token_batch

CLAIM_MODELS = ["climp-vmamba-b", "clip-vit-b-16"]
CLAIM_SIDES = [224, 896]


def csv_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> List[int]:
    return [int(v) for v in csv_list(text)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=csv_list, default=["climp-tiny", "clip-vit-tiny"],
                        help="model names, comma separated; the first is compared against the others")
    parser.add_argument("--image-sizes", type=int_list, default=[64, 128, 256, 512])
    parser.add_argument("--text-lengths", type=int_list, default=[77, 256, 1024, 2048])
    parser.add_argument("--towers", type=csv_list, default=["image", "text"])
    parser.add_argument("--batch", type=int, default=1, help="batch for memory and throughput")
    parser.add_argument("--memory-device", default=None, help="'meta' to count memory without computing")
    parser.add_argument("--no-throughput", action="store_true", help="skip timing (FLOPs and memory only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--claim", action="store_true",
                        help=f"preset: {' vs '.join(CLAIM_MODELS)} image towers at {CLAIM_SIDES}")
    parser.add_argument("--out", required=True, type=Path)


def text_cfg_for_lengths(name: str, longest: int) -> Dict[str, Any]:
    """Transformer text towers get a context as long as the longest benchmarked text (same weights
    shapes apart from the position table), so their cost can be measured at every length."""
    from climp.models.factory import get_model_config
    text_cfg = get_model_config(name)["text_cfg"]
    if text_cfg.get("type") == "transformer" and text_cfg.get("context_length", 77) < longest:
        return {"text_cfg": {"context_length": longest}}
    return {}


def bench_model(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    import climp
    model = climp.create_model(name, **(text_cfg_for_lengths(name, max(args.text_lengths))
                                        if "text" in args.towers else {})).eval()
    out: Dict[str, Any] = {}
    common = dict(batch=args.batch, memory_device=args.memory_device, throughput=not args.no_throughput,
                  repeats=args.repeats)
    if "image" in args.towers:
        out["image"] = {str(side): profile_tower(model.visual, lambda dev, n, s=side: torch.zeros(n, 3, s, s, device=dev),
                                                 **common) for side in args.image_sizes}
    if "text" in args.towers:
        # text towers read token values (validation, end-token pooling), so they run for real
        out["text"] = {str(length): profile_tower(model.text, lambda dev, n, l=length: token_batch(n, l, dev),
                                                  flops_device="cpu", **{**common, "memory_device": None})
                       for length in args.text_lengths}
    return out


def ratios(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """other / first model for FLOPs, memory and time, per tower and size: >1 means the first is cheaper."""
    names = list(results)
    first, out = names[0], {}
    for other in names[1:]:
        for tower, sizes in results[first].items():
            for size, a in sizes.items():
                b = results[other].get(tower, {}).get(size)
                if b is None:
                    continue
                row = {k: b[k] / a[k] for k in ("flops", "peak_activation_bytes", "seconds_per_batch")
                       if k in a and k in b and a[k]}
                out[f"{other} / {first} {tower} @ {size}"] = row
    return out


def plot(results: Dict[str, Dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [("flops", "FLOPs / item"), ("peak_activation_bytes", "peak activation bytes"),
               ("items_per_second", "items / s")]
    towers = sorted({t for r in results.values() for t in r})
    fig, axes = plt.subplots(len(towers), 3, figsize=(12, 3.2 * len(towers)), squeeze=False)
    for row, tower in zip(axes, towers):
        for ax, (key, label) in zip(row, metrics):
            for name, r in results.items():
                pts = [(int(s), v[key]) for s, v in r.get(tower, {}).items() if key in v]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("image side" if tower == "image" else "text length")
            ax.set_ylabel(label)
            ax.set_title(f"{tower} tower")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(results: Dict[str, Dict[str, Any]], rel: Dict[str, Any]) -> str:
    lines = ["| model | tower | size | GFLOPs | peak act. MiB | items/s | attention |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for tower, sizes in r.items():
            for size, v in sizes.items():
                ips = f"{v['items_per_second']:.3g}" if "items_per_second" in v else "-"
                lines.append(f"| {name} | {tower} | {size} | {v['flops'] / 1e9:.3g} | "
                             f"{v['peak_activation_bytes'] / 2 ** 20:.4g} | {ips} | "
                             f"{', '.join(v.get('attention_kernels', [])) or '-'} |")
    lines += ["", "| ratio (other / first) | FLOPs | memory | time |", "|---|---|---|---|"]
    for label, row in rel.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[k]:.3g}" if k in row else "-" for k in
                                                  ("flops", "peak_activation_bytes", "seconds_per_batch")) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.claim:
        args.models, args.image_sizes, args.towers = CLAIM_MODELS, CLAIM_SIDES, ["image"]
    results = {name: bench_model(name, args) for name in args.models}
    rel = ratios(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()
                                                              if k != "func"},
                                                     "results": results, "ratios": rel}, indent=2))
    (args.out / "bench.md").write_text(markdown(results, rel))
    plot(results, args.out / "bench.png")
    print(markdown(results, rel))
    return 0
