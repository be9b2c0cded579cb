"""Image-tower forward + backward time and achieved GFLOP/s, measured in one run.

Each model's image tower (model.visual) runs forward and backward of its output's sum on one
fixed batch. Every timing runs in a fresh subprocess (a few warm-up steps, then the median of
--steps), and the rounds interleave the towers, so load from other processes hits all alike.
Achieved GFLOP/s is the usual estimate 3 x forward FLOPs (torch's FlopCounterMode, the scans by
their registered formulas) / time. With --baseline PATH the first model's tower is also timed
from another checkout of climp (e.g. `git worktree add /tmp/climp-old <commit>`), in the same
rounds, to measure a change against its predecessor.

  python benchmarks/image_tower.py                            # climp-tiny vs clip-vit-tiny, 64 px
  python benchmarks/image_tower.py --models climp-tiny --baseline /tmp/climp-old --rounds 5
  python benchmarks/image_tower.py --threads 1 --clock cpu    # on a busy machine
  python benchmarks/image_tower.py --ss2d --threads 1 --clock cpu --baseline /tmp/climp-old

--ss2d times only the fused SS2D op (`climp::ss2d_scan`, forward and backward apart) at
climp-tiny's four stage shapes at --sides[0] px, summed over the tower's blocks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from statistics import median
from typing import Dict, List

from common import write_json

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run with the checkout as working directory, so `import climp` imports that checkout's package.
WORKER = """
import json, sys, time
import climp, torch
name, side, batch, steps, threads = sys.argv[1], *map(int, sys.argv[2:6])
clock = time.process_time if sys.argv[6] == "cpu" else time.perf_counter
torch.set_num_threads(threads)
torch.manual_seed(0)
tower = climp.create_model(name).visual.train()
images = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(side))
def step():
    tower(images).sum().backward()
    tower.zero_grad(set_to_none=True)
for _ in range(2):
    step()
times = []
for _ in range(steps):
    start = clock()
    step()
    times.append(clock() - start)
print(json.dumps(times))
"""


# The fused SS2D op alone at climp-tiny's stage shapes: (map side / image side, d_inner, dt rank, blocks).
SS2D_WORKER = """
import json, sys, time
import climp, torch
from climp.ops.fused_ss2d import ss2d_scan, ss2d_scan_backward
side, batch, steps, threads = map(int, sys.argv[1:5])
torch.set_num_threads(threads)
clock = time.process_time if sys.argv[5] == "cpu" else time.perf_counter
g = torch.Generator().manual_seed(0)
def best(fn):
    fn()
    times = []
    for _ in range(steps):
        start = clock()
        fn()
        times.append(clock() - start)
    return sorted(times)[len(times) // 2]
fwd = bwd = 0.0
for stride, dim, rank, blocks in ((4, 128, 4, 1), (8, 128, 4, 1), (16, 256, 8, 4), (32, 512, 16, 1)):
    hw = side // stride
    u, go = (torch.randn(batch, hw, hw, dim, generator=g) for _ in range(2))
    x = torch.randn(batch, hw, hw, 4, rank + 2, generator=g) * 0.5
    w, bias, D = torch.randn(4, dim, rank, generator=g) * 0.3, torch.randn(4 * dim, generator=g), torch.randn(4 * dim)
    A = -torch.rand(4 * dim, 1, generator=g) - 0.5
    fwd += blocks * best(lambda: ss2d_scan(u, x, w, bias, A, D, True))
    bwd += blocks * best(lambda: ss2d_scan_backward(u, x, w, bias, A, D, True, go))
print(json.dumps([fwd, bwd]))
"""


def time_ss2d(root: str, side: int, batch: int, steps: int, threads: int, clock: str) -> List[float]:
    """Median seconds of the fused SS2D op's forward and backward over climp-tiny's blocks."""
    result = subprocess.run([sys.executable, "-c", SS2D_WORKER, str(side), str(batch), str(steps), str(threads), clock],
                            cwd=root, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"timing SS2D from {root} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ss2d_main(args) -> int:
    roots = {"this checkout": ROOT, **({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})}
    side = args.sides[0]
    print(f"fused SS2D op at climp-tiny's stage shapes, {side} px, batch {args.batch}, {args.rounds} interleaved "
          f"rounds, {args.threads} threads, {args.clock} time")
    times: Dict[str, List[List[float]]] = {label: [] for label in roots}
    for _ in range(args.rounds):
        for label, root in roots.items():
            times[label].append(time_ss2d(root, side, args.batch, args.steps, args.threads, args.clock))
    print("| checkout | forward (all blocks) | backward (all blocks) |")
    print("|---|---|---|")
    for label, rows in times.items():
        print(f"| {label} | {median(r[0] for r in rows) * 1e3:.1f} ms | {median(r[1] for r in rows) * 1e3:.1f} ms |")
    write_json(args.json, args, times)
    return 0


def int_list(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v]


def time_tower(root: str, name: str, side: int, batch: int, steps: int, threads: int, clock: str) -> float:
    """Median seconds of one forward + backward of `name`'s image tower, climp imported from root."""
    result = subprocess.run([sys.executable, "-c", WORKER, name, str(side), str(batch), str(steps), str(threads),
                             clock], cwd=root, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"timing {name} from {root} failed:\n{result.stderr}")
    return median(json.loads(result.stdout.strip().splitlines()[-1]))


def forward_flops(name: str, side: int, batch: int) -> int:
    import climp
    from climp.eval.efficiency import count_flops

    tower = climp.create_model(name).visual.eval()
    return count_flops(tower, torch.randn(batch, 3, side, side))["flops"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="climp-tiny,clip-vit-tiny", help="comma-separated model names")
    parser.add_argument("--sides", type=int_list, default=[64])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (their median counts)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time instead of wall-clock time (with --threads 1, the "
                             "work itself, little affected by other processes on a busy machine)")
    parser.add_argument("--baseline", help="another climp checkout: the first model's tower timed from it too")
    parser.add_argument("--ss2d", action="store_true", help="time only the fused SS2D op (see above)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.ss2d:
        return ss2d_main(args)
    names = args.models.split(",")
    runs = [(name, ROOT, name) for name in names]
    if args.baseline:
        runs.append((f"{names[0]} (baseline)", os.path.abspath(args.baseline), names[0]))
    print(f"$ python benchmarks/image_tower.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"image tower forward + backward, batch {args.batch}, {args.rounds} interleaved rounds of "
          f"{args.steps} steps, {args.threads} threads, {args.clock} time")
    print("| tower | side | forward GFLOPs | fwd+bwd (median) | GFLOP/s (3x forward) |")
    print("|---|---|---|---|---|")
    results: Dict[int, Dict[str, object]] = {}
    for side in args.sides:
        times: Dict[str, List[float]] = {label: [] for label, _, _ in runs}
        for _ in range(args.rounds):
            for label, root, name in runs:
                times[label].append(time_tower(root, name, side, args.batch, args.steps, args.threads, args.clock))
        flops = {name: forward_flops(name, side, args.batch) for name in names}
        row: Dict[str, object] = {}
        for label, _, name in runs:
            seconds = median(times[label])
            row[label] = {"forward_flops": flops[name], "median_seconds": seconds, "times": times[label],
                          "gflops_per_second": 3 * flops[name] / seconds / 1e9}
            print(f"| {label} | {side} | {flops[name] / 1e9:.3f} | {seconds * 1e3:.0f} ms | "
                  f"{3 * flops[name] / seconds / 1e9:.0f} |", flush=True)
        first = runs[0][0]
        for label, _, _ in runs[1:]:
            ratio = median(b / a for a, b in zip(times[first], times[label]))
            row[f"{label} / {first} time"] = ratio
            print(f"{label} / {first} time at {side} px: {ratio:.2f}x (median of per-round ratios)")
        results[side] = row
    write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
