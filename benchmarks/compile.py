"""Training-step time of a model eager vs under torch.compile (what `climp train --compile` does).

One step is forward + CLIP loss + backward + AdamW update of a synthetic batch. The compiled
model is compiled once (its first steps, timed apart as compilation), then rounds alternate
eager and compiled steps on the same weights' copies; the table reports medians and their
ratio, measured in this one run.

  python benchmarks/compile.py                          # climp-tiny, batch 64, 64 px
  python benchmarks/compile.py --model clip-vit-tiny --rounds 3
"""
from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
import time
from statistics import median
from typing import Callable

from common import contrastive_step, random_batch, timed

import climp
import torch


def make_step(model: torch.nn.Module, forward: Callable, batch: int, size: int) -> Callable[[], None]:
    """Forward (through `forward`), CLIP loss, backward and AdamW update on a fixed batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return contrastive_step(model, *random_batch(batch, size), forward=forward, optimizer=optimizer)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="climp-tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode per round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    eager_model = climp.create_model(args.model, vision_cfg={"image_size": args.size})
    compiled_model = copy.deepcopy(eager_model)
    eager = make_step(eager_model, eager_model, args.batch, args.size)
    compiled = make_step(compiled_model, torch.compile(compiled_model), args.batch, args.size)
    eager()  # warm-up: kernel build, allocator
    start = time.perf_counter()
    compiled()
    compiled()  # a second step: any recompilation the first one triggers
    compile_seconds = time.perf_counter() - start
    times = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        times["eager"] += timed(eager, args.steps)
        times["compiled"] += timed(compiled, args.steps)
    e, c = median(times["eager"]), median(times["compiled"])
    print(f"| model | eager step (s) | compiled step (s) | eager / compiled | first two compiled steps (s) |\n"
          f"|---|---|---|---|---|\n| {args.model} | {e:.3f} | {c:.3f} | {e / c:.2f}x | {compile_seconds:.0f} |")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv))
    print(f"\nbatch {args.batch}, {args.size} px, torch threads {args.threads}, medians of "
          f"{args.rounds} x {args.steps} steps per mode (interleaved rounds)\ncommand: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
