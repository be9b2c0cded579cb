"""climp's fused ops' forward and backward at climp-tiny's shapes, against the C kernel of
another git revision, in one process.

`--op ss2d`: `climp::ss2d_scan` and its backward at the image tower's four stage shapes (batch 64;
maps 16x16, 8x8, 4x4, 2x2 with d_inner 128, 128, 256, 512 and dt rank 4, 4, 8, 16; d_state 1).
`--op mamba1d`: `climp::mamba1d_scan` and its backward at the text tower's shape (batch 64, 77
tokens, d_inner 256, dt rank 8, d_state 16) and two others. `--op conv1d`:
`climp::causal_conv1d_silu` and its backward as the text tower's mixer calls them (x the
channel-last first half of the in_proj output, kernel 4, with bias; batch 64, 77 tokens,
d_inner 256) and two others. `--op text-tower`: climp-tiny's whole text tower (batch 64, 77
tokens) in training mode, all its kernels on one library: forward, and forward + backward in the
bwd columns. The ops are called as the models call them; with --against REV the C sources of
that revision are compiled with this checkout's flags into a temporary directory, and the ops
run on that library in turn with this checkout's (`cpu_build`'s loaded library is swapped, so
REV's kernels must take the same arguments). The two take turns for --rounds interleaved rounds,
so load from other processes hits both alike; the table gives each one's median time, their
ratio and the largest difference of their results relative to the largest value.

--cpu-time measures CPU time (time.process_time) on one thread instead of wall time, which other
processes on a busy machine barely change.

  python benchmarks/kernel_ab.py --op ss2d --against 7041a01
  python benchmarks/kernel_ab.py --op mamba1d --against 7041a01 --cpu-time
  python benchmarks/kernel_ab.py --op conv1d --against e2493de --cpu-time
  python benchmarks/kernel_ab.py --op text-tower --against e2493de --cpu-time
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import math
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from statistics import median
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from common import EOT, SOT, add_clock_arguments, set_up_clock

import torch

from climp.ops import cpu_build

# (batch, H, W, d_inner, dt rank) of climp-tiny's four image stages at 64 px
SS2D_SHAPES = [(64, 16, 16, 128, 4), (64, 8, 8, 128, 4), (64, 4, 4, 256, 8), (64, 2, 2, 512, 16)]
# (batch, length, d_inner, dt rank, d_state): climp-tiny's text tower, a long caption, a batch of one
MAMBA1D_SHAPES = [(64, 77, 256, 8, 16), (8, 1024, 256, 8, 16), (1, 77, 256, 8, 16)]
# (batch, length, d_inner, kernel): the same three
CONV1D_SHAPES = [(64, 77, 256, 4), (8, 1024, 256, 4), (1, 77, 256, 4)]
# (batch, length, d_model) of climp-tiny's text tower
TEXT_TOWER_SHAPES = [(64, 77, 128)]
# the C functions (name_{fwd,bwd}_{f32,f64}) the ops call
KERNEL_FUNCTIONS = ("selective_scan", "ss2d", "mamba1d", "causal_conv_silu", "rms_norm", "dwconv2d_silu")


def kernel_of_revision(rev: str, build_dir: Path) -> ctypes.CDLL:
    """Compile climp/ops/csrc as of git revision `rev` the way cpu_build compiles this checkout's;
    its functions get this checkout's declarations (those it has)."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "climp/ops/csrc"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(build_dir, filter="data")
    src = build_dir / "climp" / "ops" / "csrc"
    target = build_dir / "kernel.so"
    cmd = [cpu_build.find_compiler(), *cpu_build.BASE_FLAGS, "-march=native", "-fopenmp", "-o", str(target),
           *map(str, sorted(src.glob("*.c"))), *cpu_build._link_flags(), "-lm"]
    subprocess.run(cmd, check=True)
    lib, ours = ctypes.CDLL(str(target)), cpu_build.load_cpu_kernel()
    for op in KERNEL_FUNCTIONS:
        for part in ("fwd", "bwd"):
            for suffix in ("f32", "f64"):
                name = f"{op}_{part}_{suffix}"
                if not hasattr(lib, name):
                    continue
                getattr(lib, name).argtypes = getattr(ours, name).argtypes
                getattr(lib, name).restype = None
    return lib


@contextlib.contextmanager
def using_kernel(lib: ctypes.CDLL) -> Iterator[None]:
    """Run the climp ops on `lib` inside the block."""
    saved, cpu_build._library = cpu_build._library, lib
    try:
        yield
    finally:
        cpu_build._library = saved


def ss2d_calls(shape: Tuple[int, ...]) -> Tuple[Callable, Callable]:
    """(forward, backward) of `climp::ss2d_scan` on fixed random inputs; each returns its outputs."""
    batch, height, width, dim, rank = shape
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, height, width, dim, generator=g)
    xdbl = torch.randn(batch, height, width, 4, rank + 2, generator=g) * 0.5
    weight = torch.randn(4, dim, rank, generator=g) * 0.3
    bias = torch.randn(4 * dim, generator=g) * 0.5
    A = -(torch.rand(4 * dim, 1, generator=g) + 0.5)
    D = torch.randn(4 * dim, generator=g)
    grad_out = torch.randn(batch, height, width, dim, generator=g)
    args = (u, xdbl, weight, bias, A, D, True)
    return (lambda: [torch.ops.climp.ss2d_scan(*args)],
            lambda: list(torch.ops.climp.ss2d_scan_backward(*args, grad_out)))


def mamba1d_calls(shape: Tuple[int, ...]) -> Tuple[Callable, Callable]:
    """(forward, backward) of `climp::mamba1d_scan` (with the gate) on fixed random inputs."""
    batch, length, dim, rank, state = shape
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, length, dim, generator=g)
    z = torch.randn(batch, length, dim, generator=g)
    xdbl = torch.randn(batch, length, rank + 2 * state, generator=g) * 0.5
    weight = torch.randn(dim, rank, generator=g) * 0.3
    bias = torch.randn(dim, generator=g) * 0.5 - 2.0
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1)
    D = torch.randn(dim, generator=g)
    grad_out = torch.randn(batch, length, dim, generator=g)
    args = (u, z, xdbl, weight, bias, A, D, True)
    return (lambda: [torch.ops.climp.mamba1d_scan(*args)],
            lambda: list(torch.ops.climp.mamba1d_scan_backward(*args, grad_out)))


def conv1d_calls(shape: Tuple[int, ...]) -> Tuple[Callable, Callable]:
    """(forward, backward) of `climp::causal_conv1d_silu` on x as the mixer passes it: the
    (batch, d_inner, length) view of the first half of a (batch, length, 2 d_inner) tensor."""
    batch, length, dim, kernel = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, 2 * dim, generator=g)[..., :dim].transpose(1, 2)
    weight = torch.randn(dim, 1, kernel, generator=g) * 0.5
    bias = torch.randn(dim, generator=g) * 0.5
    grad_out = torch.randn(batch, length, dim, generator=g).transpose(1, 2)
    args = (x, weight, bias)
    return (lambda: [torch.ops.climp.causal_conv1d_silu(*args, True)],
            lambda: list(torch.ops.climp.causal_conv1d_silu_backward(*args, grad_out, True)))


def text_tower_calls(shape: Tuple[int, ...]) -> Tuple[Callable, Callable]:
    """(forward, forward + backward) of climp-tiny's text tower on fixed random captions; the
    second returns the parameters' gradients."""
    import climp

    batch, length, _ = shape
    torch.manual_seed(0)
    tower = climp.create_model("climp-tiny").train().text
    texts = torch.randint(1, SOT, (batch, length), generator=torch.Generator().manual_seed(0))
    texts[:, 0], texts[:, -1] = SOT, EOT

    def forward_backward() -> List[torch.Tensor]:
        tower.zero_grad(set_to_none=True)
        tower(texts).sum().backward()
        return [p.grad for p in tower.parameters() if p.grad is not None]

    return (lambda: [tower(texts)], forward_backward)


# op -> (shapes, calls of a shape, what a shape lists, how many of a shape's leading sizes make u)
OPS = {"ss2d": (SS2D_SHAPES, ss2d_calls, "(batch, H, W, d_inner, rank)", 4),
       "mamba1d": (MAMBA1D_SHAPES, mamba1d_calls, "(batch, length, d_inner, rank, d_state)", 3),
       "conv1d": (CONV1D_SHAPES, conv1d_calls, "(batch, length, d_inner, kernel)", 3),
       "text-tower": (TEXT_TOWER_SHAPES, text_tower_calls, "(batch, length, d_model)", 3)}


def relative_difference(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / x.abs().max().clamp_min(1e-30)).item()
               for x, y in zip(a, b) if x.numel())


def time_shape(kernels: Dict[str, ctypes.CDLL], calls: Tuple[Callable, Callable], rounds: int, repeats: int,
               clock: Callable[[], float]) -> Tuple[Dict[Tuple[str, int], float], Dict[str, List[torch.Tensor]]]:
    """Median ms per call of (kernel, part) over interleaved rounds, and each kernel's results."""
    results, times = {}, {(name, part): [] for name in kernels for part in (0, 1)}
    for name, lib in kernels.items():
        with using_kernel(lib):
            results[name] = calls[0]() + calls[1]()
    for _ in range(rounds):
        for name, lib in kernels.items():
            with using_kernel(lib):
                for part in (0, 1):
                    start = clock()
                    for _ in range(repeats):
                        calls[part]()
                    times[(name, part)].append((clock() - start) / repeats * 1e3)
    return {key: median(v) for key, v in times.items()}, results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--op", choices=sorted(OPS), default="ss2d")
    parser.add_argument("--against", help="git revision whose kernel to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    add_clock_arguments(parser)
    args = parser.parse_args(argv)
    clock = set_up_clock(args)
    shapes, make_calls, shape_names, u_dims = OPS[args.op]
    kernels: Dict[str, ctypes.CDLL] = {"this checkout": cpu_build.load_cpu_kernel()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            kernels[args.against] = kernel_of_revision(args.against, Path(tmp))
        print(f"$ python benchmarks/kernel_ab.py {' '.join(argv if argv is not None else sys.argv[1:])}")
        print(f"{args.rounds} interleaved rounds, {args.threads} threads, {'CPU' if args.cpu_time else 'wall'} time, "
              "median ms per call")
        names = list(kernels)
        header = " | ".join(f"{p} {n}" for p in ("fwd", "bwd") for n in names)
        extra = " fwd ratio | bwd ratio | max rel. diff |" if len(names) > 1 else ""
        print(f"| shape {shape_names} | {header} |{extra}")
        print("|---" * (1 + 2 * len(names) + (3 if len(names) > 1 else 0)) + "|")
        for shape in shapes:
            repeats = max(1, int(2e6 // math.prod(shape[:u_dims])))
            med, results = time_shape(kernels, make_calls(shape), args.rounds, repeats, clock)
            row = f"| {shape} | " + " | ".join(f"{med[(n, p)]:.3f}" for p in (0, 1) for n in names) + " |"
            if len(names) > 1:
                new, old = names
                row += (f" {med[(old, 0)] / med[(new, 0)]:.2f}x | {med[(old, 1)] / med[(new, 1)]:.2f}x |"
                        f" {relative_difference(results[old], results[new]):.1e} |")
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
