"""Activation memory of two image towers (VMamba-B vs ViT-B/16 by default), measured in one run.

Training: the bytes of every distinct storage autograd keeps for the backward after one forward in
train mode; inference: the peak of live activation bytes during one no-grad forward in eval mode.
Both come from climp.eval.activation_memory (as `climp bench` and `climp reproduce` measure them);
weights and the input images are excluded. ViT runs twice: with the attention matrix materialised
(`math`, as most CLIP code runs) and with PyTorch's fused CPU attention (`fused`, always on CPU
tensors: there are no fused kernels on the meta device).

  python benchmarks/memory.py                         # climp-vmamba-b vs clip-vit-b-16, 224 and 896 px
  python benchmarks/memory.py --sides 224 --modes inference
  python benchmarks/memory.py --device meta     # the same bookkeeping on shapes only (no compute,
                                                # no memory: ViT's materialised attention at 896 px
                                                # keeps GBs for the backward); fused ViT on the CPU
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List

from common import write_json

import torch

from climp.eval.activation_memory import inference_peak_memory, training_activation_memory

MiB = 2**20


def measure(tower: torch.nn.Module, side: int, batch: int, mode: str, attention: str, device: str) -> Dict[str, object]:
    images = lambda dev: torch.randn(batch, 3, side, side, device=dev)  # noqa: E731
    if mode == "training":
        r = training_activation_memory(tower, images, attention, device)
        return {"bytes": r["training_activation_bytes"], "method": r["training_memory_method"],
                "device": r["training_memory_device"], "attention_kernels": r["training_attention_kernels"]}
    r = inference_peak_memory(tower, images, attention, device)
    return {"bytes": r["peak_activation_bytes"], "method": r["memory_method"], "device": r["memory_device"],
            "attention_kernels": r.get("attention_kernels", [])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="climp-vmamba-b,clip-vit-b-16",
                        help="Mamba model first, then a ViT model (comma separated)")
    parser.add_argument("--sides", default="224,896")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--modes", default="training,inference")
    parser.add_argument("--device", default="cpu", choices=["cpu", "meta"])
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    import climp

    mamba_name, vit_name = args.models.split(",")
    torch.manual_seed(0)
    towers = {name: climp.create_model(name).visual for name in (mamba_name, vit_name)}
    sides: List[int] = [int(s) for s in args.sides.split(",")]
    print(f"$ python benchmarks/memory.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"batch {args.batch}, {args.device} tensors; MiB of activations (weights and inputs excluded)")
    print(f"| mode | side | {mamba_name} | {vit_name} math | {vit_name} fused | "
          f"ViT math / Mamba | ViT fused / Mamba |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for mode in args.modes.split(","):
        for side in sides:
            row = {key: measure(towers[name], side, args.batch, mode, kind, args.device)
                   for key, name, kind in (("mamba", mamba_name, "default"), ("vit_math", vit_name, "math"),
                                           ("vit_fused", vit_name, "fused"))}
            results[f"{mode} {side}"] = row
            m, vm, vf = (row[k]["bytes"] for k in ("mamba", "vit_math", "vit_fused"))
            print(f"| {mode} | {side} | {m / MiB:.1f} | {vm / MiB:.1f} | {vf / MiB:.1f} | "
                  f"{vm / m:.2f}x | {vf / m:.2f}x |", flush=True)
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
