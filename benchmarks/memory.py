"""Activation memory of two image towers (VMamba-B vs ViT-B/16 by default), measured in one run.

Training: the bytes of every distinct storage autograd keeps for the backward during one
forward in train mode (climp.eval.efficiency.measure_saved_activations: saved-tensor hooks).
Inference: the peak of live activation bytes during one no-grad forward in eval mode
(climp.eval.efficiency.measure_peak_memory: every storage aten allocates, tracked to its
release). Weights and the input images are excluded from both. ViT runs twice: with the
attention matrix materialised (SDPA's math backend, and nn.MultiheadAttention's fused
inference path off, as most CLIP code runs) and with PyTorch's fused CPU attention (flash
attention kernel for training, the fused inference path for inference).

  python benchmarks/memory.py                         # climp-vmamba-b vs clip-vit-b-16, 224 and 896 px
  python benchmarks/memory.py --sides 224 --modes inference
  python benchmarks/memory.py --device meta     # the same bookkeeping on shapes only (no compute,
                                                # no memory: ViT's materialised attention at 896 px
                                                # keeps GBs for the backward); fused ViT on the CPU
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Dict, Iterator, List

from common import write_json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

MiB = 2**20


@contextlib.contextmanager
def attention(kind: str) -> Iterator[None]:
    """'math': materialised attention matrix; 'fused': PyTorch's fused CPU kernels; '-': as is."""
    if kind == "-":
        yield
        return
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(kind == "fused")
    backend = SDPBackend.MATH if kind == "math" else SDPBackend.FLASH_ATTENTION
    try:
        with sdpa_kernel([backend]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def measure(tower: torch.nn.Module, side: int, batch: int, mode: str, kind: str, device: str) -> Dict[str, object]:
    from climp.eval.efficiency import measure_peak_memory, measure_saved_activations, placed

    tower = placed(tower, device)
    images = torch.randn(batch, 3, side, side, device=device)
    with attention(kind):
        if mode == "training":
            r = measure_saved_activations(tower.train(), images)
            return {"bytes": r["saved_activation_bytes"], "method": r["memory_method"]}
        r = measure_peak_memory(tower.eval(), images)
        return {"bytes": r["peak_activation_bytes"], "method": r["memory_method"],
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
            # fused attention kernels exist only for real tensors: that column always runs on the CPU
            row = {key: measure(towers[name], side, args.batch, mode, kind, device)
                   for key, name, kind, device in (("mamba", mamba_name, "-", args.device),
                                                   ("vit_math", vit_name, "math", args.device),
                                                   ("vit_fused", vit_name, "fused", "cpu"))}
            results[f"{mode} {side}"] = row
            m, vm, vf = (row[k]["bytes"] for k in ("mamba", "vit_math", "vit_fused"))
            print(f"| {mode} | {side} | {m / MiB:.1f} | {vm / MiB:.1f} | {vf / MiB:.1f} | "
                  f"{vm / m:.2f}x | {vf / m:.2f}x |", flush=True)
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
