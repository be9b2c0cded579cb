"""SS2D's fused depthwise conv + SiLU (climp::dwconv2d_silu) against nn.Conv2d + SiLU, measured in one run.

Two parts, each in interleaved rounds (after one untimed warm-up each), medians:
  * the op alone, forward+backward, at the conv shapes of the model's image tower (batch, H, W,
    d_inner of every stage), against the reference path SS2D takes with a named scan backend
    (nn.Conv2d on the channel-first view, channels_last memory format, then SiLU);
  * the whole image tower forward+backward, the same weights with SS2D's conv on either path
    (the fused SS2D scan on both).
--cpu-time measures CPU time (time.process_time) on one thread instead of wall time.

  python benchmarks/dwconv.py                 # climp-tiny, 64 px, batch 64
  python benchmarks/dwconv.py --cpu-time
"""
from __future__ import annotations

import argparse
import sys
from statistics import median
from typing import Callable, Dict, List, Tuple

from common import add_clock_arguments, interleaved, set_up_clock, write_json

import torch
import torch.nn.functional as F

from climp.models import vmamba
from climp.ops import dwconv2d_silu

PATHS = ("fused", "nn.Conv2d")


def conv_shapes(tower: torch.nn.Module, images: torch.Tensor) -> List[Tuple[int, int, int, int]]:
    """The distinct (batch, H, W, d_inner) maps the tower's SS2D convs see, in order."""
    shapes: List[Tuple[int, int, int, int]] = []

    def record(module, inputs):
        shape = (*inputs[0].shape[:3], module.d_inner)
        if shape not in shapes:
            shapes.append(shape)

    hooks = [m.register_forward_pre_hook(record) for m in tower.modules() if isinstance(m, vmamba.SS2D)]
    with torch.no_grad():
        tower(images)
    for hook in hooks:
        hook.remove()
    return shapes


def op_steps(shape: Tuple[int, int, int, int], kernel: int, bias: bool) -> Dict[str, Callable[[], None]]:
    dim = shape[3]
    conv = torch.nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(*shape)
    return {
        "fused": lambda: dwconv2d_silu(x, conv.weight, conv.bias).backward(grad),
        "nn.Conv2d": lambda: F.silu(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).backward(grad),
    }


def tower_steps(tower: torch.nn.Module, images: torch.Tensor) -> Dict[str, Callable[[], None]]:
    """The tower's fwd+bwd with SS2D's conv fused, and with it on the nn.Conv2d path (SS2D asks
    vmamba.fused_ss2d_available, replaced for the step)."""
    fused_available = vmamba.fused_ss2d_available

    def step(available) -> Callable[[], None]:
        def run() -> None:
            vmamba.fused_ss2d_available = available
            try:
                tower(images).sum().backward()
            finally:
                vmamba.fused_ss2d_available = fused_available
            tower.zero_grad(set_to_none=True)

        return run

    return {"fused": step(fused_available), "nn.Conv2d": step(lambda u, backend="auto": False)}


def medians(times: Dict[str, List[float]]) -> Dict[str, float]:
    return {key: median(values) for key, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="climp-tiny")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the whole tower (the op alone: 4x)")
    add_clock_arguments(parser)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    clock = set_up_clock(args)
    import climp

    torch.manual_seed(0)
    tower = climp.create_model(args.model).visual.train()
    images = torch.randn(args.batch, 3, args.side, args.side)
    cfg = tower.cfg
    print(f"$ python benchmarks/dwconv.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{args.model} image tower, side {args.side}, batch {args.batch}, {cfg.d_conv}x{cfg.d_conv} conv, "
          f"bias {cfg.conv_bias}, {args.threads} threads, {'CPU' if args.cpu_time else 'wall'} time")
    print("| what | fused | nn.Conv2d + SiLU | nn.Conv2d / fused |")
    print("|---|---|---|---|")
    results: Dict[str, Dict[str, float]] = {}
    for shape in conv_shapes(tower, images):
        key = f"op fwd+bwd {tuple(shape)}"
        results[key] = medians(interleaved(op_steps(shape, cfg.d_conv, cfg.conv_bias), 4 * args.rounds, clock))
    results["image tower fwd+bwd"] = medians(interleaved(tower_steps(tower, images), args.rounds, clock))
    for key, r in results.items():
        print(f"| {key} | {r['fused'] * 1e3:.2f} ms | {r['nn.Conv2d'] * 1e3:.2f} ms | "
              f"{r['nn.Conv2d'] / r['fused']:.2f}x |", flush=True)
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
