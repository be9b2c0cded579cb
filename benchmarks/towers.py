"""Forward+backward time and achieved GFLOP/s of each tower of two CLIP models, measured in one run.

Each tower runs forward, then backward of the sum of its output, on a fixed batch (images at
--side, captions of --text-length tokens). The towers take turns for --rounds interleaved rounds
(after one untimed warm-up each), so load from other processes hits all alike; the table gives
each tower's median time, its forward GFLOPs per sample (torch.utils.flop_counter, 2 FLOPs per
multiply-add, attention included, as `climp bench` counts) and the training GFLOP/s it achieves,
counting forward+backward as 3x the forward FLOPs. --unfused-text adds the first model's text
tower on its unfused path (scan_backend "cpu": channel-first layout, dt_proj as a matmul, the
plain scan kernel).

--cpu-time measures CPU time (time.process_time) on one thread instead of wall time, which other
processes on a busy machine barely change.

  python benchmarks/towers.py                       # climp-tiny vs clip-vit-tiny, 64 px, batch 64
  python benchmarks/towers.py --unfused-text --rounds 5
  python benchmarks/towers.py --unfused-text --cpu-time
"""
from __future__ import annotations

import argparse
import sys
from statistics import median
from typing import Callable, Dict

from common import add_clock_arguments, interleaved, random_batch, set_up_clock, write_json

import torch


def tower_step(tower: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        tower(x).sum().backward()
        tower.zero_grad(set_to_none=True)

    return step


def forward_flops(tower: torch.nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs as `climp bench` counts them (CPU attention kernels included)."""
    from climp.eval.efficiency import count_flops

    return count_flops(tower, x)["flops"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="climp-tiny,clip-vit-tiny")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--text-length", type=int, default=77)
    parser.add_argument("--rounds", type=int, default=3)
    add_clock_arguments(parser)
    parser.add_argument("--unfused-text", action="store_true",
                        help="add the first model's text tower with scan_backend 'cpu' (the unfused path)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    clock = set_up_clock(args)
    import climp

    torch.manual_seed(0)
    images, texts = random_batch(args.batch, args.side, args.text_length, seed=0)
    names = args.models.split(",")
    towers: Dict[str, tuple] = {}
    for name in names:
        model = climp.create_model(name).train()
        towers[f"{name} image"] = (model.visual, images)
        towers[f"{name} text"] = (model.text, texts)
    if args.unfused_text:
        model = climp.create_model(names[0], text_cfg={"scan_backend": "cpu"}).train()
        towers[f"{names[0]} text unfused"] = (model.text, texts)
    print(f"$ python benchmarks/towers.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"side {args.side}, batch {args.batch}, text length {args.text_length}, {args.rounds} interleaved rounds, "
          f"{args.threads} threads, {'CPU' if args.cpu_time else 'wall'} time")
    steps = {key: tower_step(tower, x) for key, (tower, x) in towers.items()}
    flops = {key: forward_flops(tower, x) for key, (tower, x) in towers.items()}
    times = interleaved(steps, args.rounds, clock)
    print("| tower | fwd+bwd (median) | forward GFLOPs / sample | training GFLOP/s |")
    print("|---|---|---|---|")
    results = {}
    for key in steps:
        seconds = median(times[key])
        rate = 3 * flops[key] / seconds / 1e9
        results[key] = {"median_seconds": seconds, "times": times[key], "forward_flops": flops[key],
                        "training_gflops_per_second": rate}
        print(f"| {key} | {seconds * 1e3:.0f} ms | {flops[key] / args.batch / 1e9:.3f} | {rate:.1f} |", flush=True)
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
