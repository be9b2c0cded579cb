"""Selective-scan speed and memory: the `cpu` and `chunked` backends against the reference.

Prints ratios measured in this one run, and the command that produced them. The sequential
reference is very slow at these shapes, so the speed-ups compare every backend with the
reference on the same inputs cut to the first --ref-length steps (both measured, nothing
extrapolated), timed in --rounds alternating rounds whose median ratio is reported; the cpu
backend's absolute times and state updates per second use the full length. One state update
is one (batch, dim, length, state) element of the recurrence; a forward+backward counts each
element once.

Memory: each backend runs forward+backward once in a fresh subprocess; the peak resident set
(Linux VmHWM, reset through /proc/self/clear_refs just before the run) minus the resident set
just before it is what the run added. The table reports (inputs + that addition) divided by
(inputs + output + input gradients): 1.0 means nothing beyond the unavoidable tensors.

  python benchmarks/scan.py                  # default shapes
  python benchmarks/scan.py --end-to-end     # also a climp-tiny training step, auto vs reference
  python benchmarks/scan.py --cpu-time       # only CPU time per element of the cpu backend

--cpu-time measures the cpu backend on one thread with time.process_time (CPU time, so other
processes on a busy machine barely change it), at climp-tiny's scan shapes by default: the
image tower's d_state 1 scans (4 directions as channels, grouped B/C, no z) and the text
tower's d_state 16 scans (gate z).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from statistics import median
from typing import Callable, Dict, List, Tuple

import torch

# Run from a checkout without installing: the repository root holds the climp package.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

Shape = Tuple[int, int, int, int]
DEFAULT_SHAPES = "32,192,256,1;32,192,256,16;8,768,512,16"
# batch, dim, length, state, B/C groups, gate z: climp-tiny at batch 8 (64 px images, 16 tokens).
CPU_TIME_SHAPES = ((8, 256, 256, 1, 4, False), (8, 512, 64, 1, 4, False), (8, 1024, 16, 1, 4, False),
                   (8, 2048, 4, 1, 4, False), (8, 256, 16, 16, 1, True), (2, 768, 512, 16, 1, True))
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def parse_shapes(text: str) -> List[Shape]:
    shapes = []
    for item in text.split(";"):
        parts = [int(p) for p in item.split(",")]
        if len(parts) != 4 or min(parts) < 1:
            raise argparse.ArgumentTypeError(f"shape must be batch,dim,length,state; got {item!r}")
        shapes.append(tuple(parts))
    return shapes


def make_inputs(shape: Shape, requires_grad: bool = True, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Mamba-like float32 inputs: softplus'ed delta with bias, gate z, skip D."""
    batch, dim, length, state = shape
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": torch.randn(batch, dim, length, generator=gen) * 0.5 - 1.0,
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, state, length, generator=gen),
        "C": torch.randn(batch, state, length, generator=gen),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, length, generator=gen),
        "delta_bias": torch.rand(dim, generator=gen) * 0.1,
    }
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


def truncated(inputs: Dict[str, torch.Tensor], length: int) -> Dict[str, torch.Tensor]:
    out = {}
    for name, t in inputs.items():
        cut = t.detach()[..., :length].contiguous() if name in ("u", "delta", "B", "C", "z") else t.detach()
        out[name] = cut.requires_grad_()
    return out


def scan_fn(backend: str) -> Callable[..., torch.Tensor]:
    from climp.ops import selective_scan

    def run(inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        return selective_scan(*(inputs[k] for k in NAMES), delta_softplus=True, backend=backend)

    return run


def best_time(step: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def time_backend(backend: str, inputs: Dict[str, torch.Tensor], repeats: int, warmup: int = 1) -> Tuple[float, float]:
    """(forward seconds, forward+backward seconds), best of `repeats`. The output's gradient
    is made once, outside the timed calls: it is the caller's tensor, not the scan's work."""
    fn = scan_fn(backend)
    leaves = [inputs[k] for k in NAMES]
    grad_out = torch.ones_like(inputs["u"])

    def forward():
        with torch.no_grad():
            fn(inputs)

    def forward_backward():
        torch.autograd.grad(fn(inputs), leaves, grad_out)

    return best_time(forward, repeats, warmup), best_time(forward_backward, repeats, warmup)


def rounds_against_reference(inputs: Dict[str, torch.Tensor], repeats: int, rounds: int) -> List[Dict[str, float]]:
    """Reference and cpu timed alternately, `rounds` times, on the same inputs: a slow-down of
    the machine during one round shows in that round's ratio only, and the median of the rounds'
    ratios ignores it. The reference is warmed up on a 4-step cut first (its first call pays
    one-time costs) and timed once per round (it is slow); the cpu backend best of `repeats`."""
    time_backend("reference", truncated(inputs, min(4, inputs["u"].shape[-1])), 1, warmup=0)
    results = []
    for _ in range(rounds):
        ref_fwd, ref_fb = time_backend("reference", inputs, 1, warmup=0)
        cpu_fwd, cpu_fb = time_backend("cpu", inputs, repeats)
        results.append({"ref_fwd": ref_fwd, "ref_fb": ref_fb, "cpu_fwd": cpu_fwd, "cpu_fb": cpu_fb})
    return results


def cpu_time_per_element(repeats: int) -> List[Dict[str, float]]:
    """Single-threaded CPU ns per (batch, dim, length) element of the cpu backend's forward and
    backward (fwd+bwd minus fwd), median of `repeats` after a warm-up, at CPU_TIME_SHAPES."""
    from climp.ops import selective_scan

    torch.set_num_threads(1)
    rows = []
    for batch, dim, length, state, groups, gate in CPU_TIME_SHAPES:
        x = make_inputs((batch, dim, length, state))
        gen = torch.Generator().manual_seed(1)
        for name in ("B", "C"):
            x[name] = torch.randn(batch, groups, state, length, generator=gen).requires_grad_()
        if not gate:
            x["z"] = None
        leaves = [x[k] for k in NAMES if x[k] is not None]
        grad_out = torch.ones(batch, dim, length)

        def forward():
            with torch.no_grad():
                selective_scan(*(x[k] for k in NAMES), delta_softplus=True, backend="cpu")

        def forward_backward():
            out = selective_scan(*(x[k] for k in NAMES), delta_softplus=True, backend="cpu")
            torch.autograd.grad(out, leaves, grad_out)

        def cpu_seconds(fn):
            fn()
            times = []
            for _ in range(repeats):
                start = time.process_time()
                fn()
                times.append(time.process_time() - start)
            return sorted(times)[len(times) // 2]

        elements = batch * dim * length
        fwd, both = cpu_seconds(forward), cpu_seconds(forward_backward)
        rows.append({"shape": [batch, dim, length, state, groups, gate], "fwd_ns": fwd / elements * 1e9,
                     "bwd_ns": (both - fwd) / elements * 1e9, "fwd_bwd_ns_per_update": both / elements / state * 1e9})
        r = rows[-1]
        print(f"| {batch},{dim},{length},{state} | {groups} | {'yes' if gate else 'no'} | {r['fwd_ns']:.2f} | "
              f"{r['bwd_ns']:.2f} | {r['fwd_bwd_ns_per_update']:.2f} |", flush=True)
    return rows


def probe_memory(backend: str, shape: Shape) -> Dict[str, float]:
    """Run in a fresh process: bytes added by one forward+backward (see module docstring)."""
    fn = scan_fn(backend)
    small = make_inputs((1, 8, 4, shape[3]))
    torch.autograd.grad(fn(small).sum(), [small["u"]])  # load libraries and the kernel first
    inputs = make_inputs(shape)
    leaves = [inputs[k] for k in NAMES]
    input_bytes = sum(t.numel() * t.element_size() for t in leaves)
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = fn(inputs)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    added = (_status_kib("VmHWM") - baseline) * 1024
    unavoidable = input_bytes + out.numel() * out.element_size() + sum(g.numel() * g.element_size() for g in grads)
    return {"ratio": (input_bytes + added) / unavoidable, "added_mb": added / 2**20, "unavoidable_mb": unavoidable / 2**20}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_in_subprocess(backend: str, shape: Shape, threads: int) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--probe-memory", backend, "--shapes", ",".join(map(str, shape)), "--threads", str(threads)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def end_to_end(repeats: int, batch: int) -> Dict[str, float]:
    """Seconds per climp-tiny training step (forward, CLIP loss, backward) per scan backend."""
    import climp
    from open_clip.loss import ClipLoss

    model = climp.create_model("climp-tiny")
    size = getattr(getattr(model.visual, "cfg", None), "image_size", 64)
    size = size if isinstance(size, int) else 64
    images = torch.randn(batch, 3, size, size)
    texts = torch.randint(1, 49406, (batch, 16))
    texts[:, 0], texts[:, -1] = 49406, 49407
    loss_fn = ClipLoss()
    results = {}
    for backend in ("auto", "reference"):
        for module in model.modules():
            if hasattr(module, "scan_backend"):
                module.scan_backend = backend

        def step():
            out = model(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            loss.backward()
            model.zero_grad(set_to_none=True)

        results[backend] = best_time(step, repeats)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", type=parse_shapes, default=parse_shapes(DEFAULT_SHAPES),
                        help="';'-separated batch,dim,length,state (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="best-of repeats for the fast backends")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating reference/cpu rounds; speed-ups are their median (default: %(default)s)")
    parser.add_argument("--ref-length", type=int, default=32, help="steps of the sequence the reference runs on")
    parser.add_argument("--chunked-length", type=int, default=128, help="steps the chunked backend runs on")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--end-to-end", action="store_true", help="also time a climp-tiny training step")
    parser.add_argument("--e2e-batch", type=int, default=8)
    parser.add_argument("--cpu-time", action="store_true", help="only single-threaded CPU ns per element (see above)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe_memory:
        print(json.dumps(probe_memory(args.probe_memory, args.shapes[0])))
        return 0
    from climp.ops import build_cpu_kernel

    build_cpu_kernel()
    if args.cpu_time:
        print("| shape (b,d,l,n) | groups | z | fwd ns/elem | bwd ns/elem | fwd+bwd ns/update |\n|---|---|---|---|---|---|")
        rows = cpu_time_per_element(max(args.repeats, 11))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"cpu_time": rows}, f, indent=2)
        return 0
    rows = []
    for shape in args.shapes:
        batch, dim, length, state = shape
        full = make_inputs(shape)
        cpu_fwd, cpu_fb = time_backend("cpu", full, args.repeats)
        ref_len = min(length, args.ref_length)
        rounds = rounds_against_reference(truncated(full, ref_len), args.repeats, args.rounds)
        fb_ratios = [r["ref_fb"] / r["cpu_fb"] for r in rounds]
        ch_len = min(length, args.chunked_length)
        ch_inputs = truncated(full, ch_len)
        _, ch_fb = time_backend("chunked", ch_inputs, 1)
        _, cpu_ch_fb = time_backend("cpu", ch_inputs, args.repeats)
        row = {
            "shape": shape,
            "cpu_fwd_ms": cpu_fwd * 1e3,
            "cpu_fwd_bwd_ms": cpu_fb * 1e3,
            "updates_per_s": batch * dim * length * state / cpu_fb,
            "ref_length": ref_len,
            "fwd_speedup": median([r["ref_fwd"] / r["cpu_fwd"] for r in rounds]),
            "fwd_bwd_speedup": median(fb_ratios),
            "fwd_bwd_speedup_rounds": fb_ratios,
            "chunked_length": ch_len,
            "chunked_fwd_bwd_ms": ch_fb * 1e3,
            "chunked_vs_ref": (median([r["ref_fb"] for r in rounds]) * ch_len / ref_len) / ch_fb,
            "cpu_vs_chunked": ch_fb / cpu_ch_fb,
        }
        if not args.no_memory:
            row["mem_cpu"] = memory_in_subprocess("cpu", shape, args.threads)
            row["mem_chunked"] = memory_in_subprocess("chunked", (batch, dim, ch_len, state), args.threads)
        rows.append(row)
        print(f"done {shape}", file=sys.stderr, flush=True)
    print(format_table(rows, args))
    results = {"rows": rows, "threads": args.threads}
    if args.end_to_end:
        e2e = end_to_end(args.repeats, args.e2e_batch)
        results["end_to_end"] = e2e
        print(f"\nclimp-tiny training step (batch {args.e2e_batch}): auto {e2e['auto'] * 1e3:.0f} ms, "
              f"reference {e2e['reference'] * 1e3:.0f} ms, speed-up {e2e['reference'] / e2e['auto']:.1f}x")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv))
    print(f"\ncommand: {command}  (torch threads: {args.threads})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results, command=command), f, indent=2)
    return 0


def format_table(rows, args) -> str:
    head = ("| shape (b,d,l,n) | cpu fwd ms | cpu fwd+bwd ms | updates/s fwd+bwd | fwd speed-up | "
            "fwd+bwd speed-up (rounds' range) | chunked fwd+bwd ms (len) | chunked vs ref | cpu vs chunked | peak mem cpu | peak mem chunked |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mem = {b: (f"{r[f'mem_{b}']['ratio']:.2f}x" if f"mem_{b}" in r else "-") for b in ("cpu", "chunked")}
        spread = "-".join(f"{x:.0f}x" for x in (min(r["fwd_bwd_speedup_rounds"]), max(r["fwd_bwd_speedup_rounds"])))
        lines.append(
            f"| {','.join(map(str, r['shape']))} | {r['cpu_fwd_ms']:.1f} | {r['cpu_fwd_bwd_ms']:.1f} | "
            f"{r['updates_per_s']:.2e} | {r['fwd_speedup']:.0f}x | {r['fwd_bwd_speedup']:.0f}x ({spread}) | "
            f"{r['chunked_fwd_bwd_ms']:.0f} ({r['chunked_length']}) | {r['chunked_vs_ref']:.0f}x | "
            f"{r['cpu_vs_chunked']:.0f}x | {mem['cpu']} | {mem['chunked']} |"
        )
    lines.append(f"\nspeed-ups vs reference: median of {args.rounds} alternating rounds on the first {args.ref_length} "
                 "steps (same inputs for both); "
                 f"chunked on the first {args.chunked_length} steps (its 'vs ref' scales the reference time by length); "
                 "peak mem = (inputs + added peak RSS) / (inputs + output + grads); chunked's at its length")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
