"""The fused SS2D op's forward and backward at climp-tiny's four stage shapes, optionally against
the kernel of another git revision, in one process.

Each shape (batch 64; maps 16x16, 8x8, 4x4, 2x2 with d_inner 128, 128, 256, 512 and dt rank
4, 4, 8, 16; d_state 1) runs the forward and the backward kernels (`ss2d_fwd_f32` and
`ss2d_bwd_f32`, the calls `climp::ss2d_scan` and its backward make) on the same inputs. With
--against REV the C sources of that revision are compiled with the same flags into a temporary
directory and loaded beside this checkout's kernel; the two take turns for --rounds interleaved
rounds, so load from other processes hits both alike, and the table gives each one's median
time, their ratio and the largest difference of their results relative to the largest value.

--cpu-time measures CPU time (time.process_time) on one thread instead of wall time, which other
processes on a busy machine barely change.

  python benchmarks/ss2d_op.py --against 7041a01
  python benchmarks/ss2d_op.py --against 7041a01 --cpu-time
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import climp  # noqa: E402,F401 - before torch (OMP_WAIT_POLICY)
import torch  # noqa: E402

from climp.ops import cpu_build  # noqa: E402

# (batch, H, W, d_inner, dt rank) of climp-tiny's four stages at 64 px, batch 64
STAGES = [(64, 16, 16, 128, 4), (64, 8, 8, 128, 4), (64, 4, 4, 256, 8), (64, 2, 2, 512, 16)]


def kernel_of_revision(rev: str, build_dir: Path) -> ctypes.CDLL:
    """Compile climp/ops/csrc at git revision `rev` as cpu_build compiles this checkout's."""
    root = Path(__file__).resolve().parents[1]
    src = build_dir / "csrc"
    src.mkdir(parents=True, exist_ok=True)
    for name in cpu_build.SOURCES:
        text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:climp/ops/csrc/{name}"],
                              capture_output=True, text=True, check=True).stdout
        (src / name).write_text(text)
    target = build_dir / "kernel.so"
    cmd = [cpu_build.find_compiler(), *cpu_build.BASE_FLAGS, "-march=native", "-fopenmp", "-o", str(target),
           *(str(src / name) for name in cpu_build.C_SOURCES), *cpu_build._link_flags(), "-lm"]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(target))
    cpu_build._declare(lib)
    return lib


def stage_calls(lib: ctypes.CDLL, shape: Tuple[int, ...], threads: int) -> Tuple[Callable, Callable]:
    """(forward, backward) of one stage shape on fixed random inputs; each returns its outputs."""
    batch, height, width, dim, rank = shape
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, height, width, dim, generator=g)
    xdbl = torch.randn(batch, height, width, 4, rank + 2, generator=g) * 0.5
    weight = torch.randn(4, dim, rank, generator=g) * 0.3
    bias = torch.randn(4 * dim, generator=g) * 0.5
    A = -(torch.rand(4 * dim, 1, generator=g) + 0.5)
    D = torch.randn(4 * dim, generator=g)
    grad_out = torch.randn(batch, height, width, dim, generator=g)
    inputs = (u, xdbl, weight, bias, A, D)
    ptrs = [t.data_ptr() for t in inputs]
    sizes = (batch, height, width, dim, rank, 1)

    def forward() -> List[torch.Tensor]:
        out = torch.empty_like(u)
        lib.ss2d_fwd_f32(*ptrs, 1, out.data_ptr(), *sizes, threads)
        return [out]

    def backward() -> List[torch.Tensor]:
        grads = [torch.empty_like(t) for t in inputs]
        lib.ss2d_bwd_f32(*ptrs, 1, grad_out.data_ptr(), *(t.data_ptr() for t in grads), *sizes, threads)
        return grads

    return forward, backward


def relative_difference(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / x.abs().max().clamp_min(1e-30)).item() for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", help="git revision whose kernel to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cpu-time", action="store_true", help="time.process_time on one thread")
    args = parser.parse_args(argv)
    threads = 1 if args.cpu_time else args.threads
    torch.set_num_threads(threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    kernels: Dict[str, ctypes.CDLL] = {"this checkout": cpu_build.load_cpu_kernel()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            kernels[args.against] = kernel_of_revision(args.against, Path(tmp))
        print(f"$ python benchmarks/ss2d_op.py {' '.join(argv if argv is not None else sys.argv[1:])}")
        print(f"{args.rounds} interleaved rounds, {threads} threads, {'CPU' if args.cpu_time else 'wall'} time, "
              "median ms per call")
        names = list(kernels)
        header = " | ".join(f"{p} {n}" for p in ("fwd", "bwd") for n in names)
        print(f"| stage shape (batch, H, W, d_inner), rank | {header} |" + (" fwd ratio | bwd ratio | max rel. diff |"
                                                                           if len(names) > 1 else ""))
        print("|---" * (1 + 2 * len(names) + (3 if len(names) > 1 else 0)) + "|")
        for shape in STAGES:
            calls = {name: stage_calls(lib, shape, threads) for name, lib in kernels.items()}
            results = {name: (fwd() + bwd()) for name, (fwd, bwd) in calls.items()}
            repeats = max(1, int(2e6 // (shape[0] * shape[1] * shape[2] * shape[3])))
            times = {(name, part): [] for name in names for part in (0, 1)}
            for _ in range(args.rounds):
                for name in names:
                    for part in (0, 1):
                        start = clock()
                        for _ in range(repeats):
                            calls[name][part]()
                        times[(name, part)].append((clock() - start) / repeats * 1e3)
            med = {key: median(v) for key, v in times.items()}
            cells = " | ".join(f"{med[(n, p)]:.3f}" for p in (0, 1) for n in names)
            row = f"| {shape[:4]}, {shape[4]} | {cells} |"
            if len(names) > 1:
                new, old = names
                row += (f" {med[(old, 0)] / med[(new, 0)]:.2f}x | {med[(old, 1)] / med[(new, 1)]:.2f}x |"
                        f" {relative_difference(results[old], results[new]):.1e} |")
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
