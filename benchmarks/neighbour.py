"""Training-step time alone vs beside one busy neighbour process, for climp-tiny and clip-vit-tiny.

A "busy neighbour" is a second Python process spinning on the CPU (what another job on a shared
machine does). One step is forward + CLIP loss + backward of a synthetic batch. Rounds alternate
alone / with neighbour, each model a few steps per round; the table reports each model's median
step time in both states and their ratio, all measured in this one run. The OpenMP wait policy
in effect is printed: climp's default is PASSIVE with GOMP_SPINCOUNT=1000 (idle threads spin a
few microseconds, then sleep); `OMP_WAIT_POLICY=ACTIVE python benchmarks/neighbour.py` measures
spinning threads instead, `GOMP_SPINCOUNT=0 python benchmarks/neighbour.py` threads that sleep at once.

  python benchmarks/neighbour.py                 # batch 64, 64 px, 3 rounds of 3 steps
  python benchmarks/neighbour.py --batch 16 --rounds 2 --steps 2
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from statistics import median
from typing import Callable, Dict, List

from common import contrastive_step, random_batch, timed

import climp
import torch

MODELS = ("climp-tiny", "clip-vit-tiny")
SPIN = "while True:\n    pass\n"


def make_step(name: str, batch: int, size: int) -> Callable[[], None]:
    """One forward + CLIP loss + backward of `name` on a fixed random batch."""
    torch.manual_seed(0)
    model = climp.create_model(name, vision_cfg={"image_size": size})
    model.train()
    return contrastive_step(model, *random_batch(batch, size))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model per round and state")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = {name: make_step(name, args.batch, args.size) for name in MODELS}
    for step in steps.values():  # warm-up: kernel build, allocator, first-call costs
        step()
    times: Dict[str, Dict[str, List[float]]] = {m: {"alone": [], "neighbour": []} for m in MODELS}
    for _ in range(args.rounds):
        for state in ("alone", "neighbour"):
            neighbour = subprocess.Popen([sys.executable, "-c", SPIN]) if state == "neighbour" else None
            try:
                if neighbour:
                    time.sleep(0.5)
                for name, step in steps.items():
                    times[name][state] += timed(step, args.steps)
            finally:
                if neighbour:
                    neighbour.kill()
                    neighbour.wait()
    print("| model | step alone (s) | step with one busy neighbour (s) | ratio |\n|---|---|---|---|")
    for name in MODELS:
        alone, busy = median(times[name]["alone"]), median(times[name]["neighbour"])
        print(f"| {name} | {alone:.3f} | {busy:.3f} | {busy / alone:.2f}x |")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv))
    print(f"\nbatch {args.batch}, {args.size} px, torch threads {args.threads}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '(unset)')}, "
          f"{os.cpu_count()} CPUs, medians of {args.rounds} x {args.steps} steps per state\ncommand: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
