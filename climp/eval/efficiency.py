"""FLOPs, peak memory and throughput of image and text towers.

FLOPs: torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add of matmuls, convs and
attention; elementwise ops are not counted). The selective scan is the custom op
`climp::selective_scan` (climp.ops), whose registered FLOP formula follows VMamba's
`flops_selective_scan_fn`: 9*B*L*D*N, plus B*D*L each for the D skip and the z gate; the fused
ops `climp::ss2d_scan` and `climp::mamba1d_scan` count the same plus their in-kernel dt
projection as a matmul would (so fused and unfused paths count equal totals). The ops have fake
implementations, so whole models are counted on the meta device without computing anything.

Peak memory: on CUDA, torch.cuda.max_memory_allocated. Elsewhere (CPU, meta) a dispatch mode
tracks every storage that aten ops allocate during the forward and when it is freed; the peak of
the live bytes is the activation peak (weights and inputs, allocated before, are reported
apart). It sees only what passes through aten: the workspace inside a fused kernel (the scan, a
flash-attention kernel) is not counted, just as cudaMalloc-level counting would not see SRAM.
Which attention kernel ran is recorded from the aten ops seen (a fused SDPA kernel, or the math
path that materialises the attention matrix).

Training activation memory (what the forward keeps for the backward) and the choice of attention
backend are in climp.eval.activation_memory.
"""
from __future__ import annotations

import copy
import time
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from ..ops import selective_scan_flops  # noqa: F401 - part of this module's API


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention_flop_formula(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """torch counts the CUDA fused attention kernels but not the CPU one: same count (full
    scores @ values, causal masking not discounted, as torch does for the others)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@torch.no_grad()
def count_flops(fn: Callable[..., Any], *args: Any) -> Dict[str, Any]:
    """Total forward FLOPs of fn(*args) and the split by operator, selective scan included."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "flops_by_op": by_op}


class PeakMemoryTracker(TorchDispatchMode):
    """Live bytes of storages allocated by aten ops inside the mode, and their peak."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.existing = {t.untyped_storage()._cdata for t in existing}
        self.live: Dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func.overloadpacket))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key in self.live or key in self.existing:
            return
        nbytes = storage.nbytes()
        self.live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def attention_kernels(self) -> List[str]:
        """The attention path taken: fused SDPA kernels seen, or 'math' when softmax+bmm ran instead."""
        fused = sorted(op for op in self.ops if "attention" in op)
        if fused:
            return fused
        math = any("softmax" in op for op in self.ops) and any(op in self.ops for op in ("aten.bmm", "aten.matmul"))
        return ["math (softmax of a materialised attention matrix)"] if math else []


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def measure_peak_memory(fn: Callable[..., Any], *args: torch.Tensor) -> Dict[str, Any]:
    """Peak memory of fn(*args) beyond its inputs and, for a module, its weights (see the module
    docstring); views of those are not counted as new memory."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    inputs = tensor_bytes(a for a in args if isinstance(a, torch.Tensor))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn(*args)
        torch.cuda.synchronize(device)
        return {"peak_activation_bytes": torch.cuda.max_memory_allocated(device) - before,
                "input_bytes": inputs, "memory_method": "torch.cuda.max_memory_allocated"}
    existing = [a for a in args if isinstance(a, torch.Tensor)]
    if isinstance(fn, torch.nn.Module):
        existing += list(fn.parameters()) + list(fn.buffers())
    tracker = PeakMemoryTracker(existing)
    with tracker:
        fn(*args)
    return {"peak_activation_bytes": tracker.peak, "input_bytes": inputs,
            "memory_method": "aten storage tracking (dispatch mode)",
            "attention_kernels": tracker.attention_kernels()}


@torch.no_grad()
def measure_throughput(fn: Callable[..., Any], *args: Any, items: int, warmup: int = 1,
                       repeats: int = 3) -> Dict[str, float]:
    """Items per second of fn(*args), from the fastest of `repeats` timed calls after warm-up."""
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"seconds_per_batch": best, "items_per_second": items / best}


def parameter_bytes(module: torch.nn.Module) -> int:
    return tensor_bytes(module.parameters()) + tensor_bytes(module.buffers())


def token_batch(batch: int, length: int, device: Any = "cpu", seed: int = 0) -> torch.Tensor:
    """Token ids of the given length: start token, random BPE ids, end token last."""
    if length < 2:
        raise ValueError(f"text length must be >= 2 (start and end tokens), got {length}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 49406, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 49406, 49407
    return ids.to(device)


def placed(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """The module itself on its own device, or a weightless copy on the meta device."""
    current = next(module.parameters()).device
    if torch.device(device) == current:
        return module
    if device != "meta":
        raise ValueError(f"towers are profiled on their own device ({current}) or on 'meta', got {device!r}")
    return copy.deepcopy(module).to("meta")


def profile_tower(tower: torch.nn.Module, make_input: Callable[[Any, int], torch.Tensor], batch: int,
                  flops_device: str = "meta", memory_device: Optional[str] = None, throughput: bool = True,
                  repeats: int = 3) -> Dict[str, Any]:
    """FLOPs per item (batch 1), peak memory and throughput (batch items) of tower(make_input(dev, n)).

    FLOPs and memory may run on the meta device (no compute, no weights); throughput runs where the
    tower lives."""
    tower.eval()
    device = str(next(tower.parameters()).device)
    memory_device = memory_device or device
    out: Dict[str, Any] = {"params": sum(p.numel() for p in tower.parameters()),
                           "param_bytes": parameter_bytes(tower), "batch": batch,
                           "flops_device": flops_device, "memory_device": memory_device}
    out.update(count_flops(placed(tower, flops_device), make_input(flops_device, 1)))
    out.update(measure_peak_memory(placed(tower, memory_device), make_input(memory_device, batch)))
    if throughput:
        out.update(measure_throughput(tower, make_input(device, batch), items=batch, repeats=repeats))
    return out
