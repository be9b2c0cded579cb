"""Activation memory of a tower under a chosen attention backend: what one training forward keeps
for the backward, and the inference peak.

Training activation memory: the bytes of the distinct storages that autograd saves for the
backward during one forward (torch.autograd.graph.saved_tensors_hooks) and still holds when the
forward returns. The inputs and, for a module, its weights and buffers are excluded; views and
repeated saves of one storage count once. It is what a training step holds between its forward
and its backward, whatever the allocator; like the inference peak (climp.eval.efficiency), it
does not see the workspace inside a fused kernel.

Attention backends: 'math' materialises the attention matrix (SDPA's math backend, and
nn.MultiheadAttention's fused inference path off), as most CLIP code runs and as the CLIMP paper
compares; 'fused' runs PyTorch's fused CPU kernels (flash attention for SDPA, the fused
nn.MultiheadAttention inference path); 'default' leaves PyTorch's choice. Fused kernels exist only
for real tensors, so a 'fused' measurement asked for on the meta device runs on the CPU (the
result names the device)."""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Dict, Iterator, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .efficiency import PeakMemoryTracker, measure_peak_memory, placed

ATTENTION_BACKENDS = ("default", "math", "fused")
TRAINING_METHOD = "torch.autograd.graph.saved_tensors_hooks (distinct storages held after the forward)"


@contextlib.contextmanager
def attention_backend(kind: str) -> Iterator[None]:
    """Run attention inside the block with the named backend (see the module docstring)."""
    if kind not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {kind!r}; choose from {list(ATTENTION_BACKENDS)}")
    if kind == "default":
        yield
        return
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(kind == "fused")
    try:
        with sdpa_kernel([SDPBackend.MATH if kind == "math" else SDPBackend.FLASH_ATTENTION]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def measure_saved_activations(fn: Callable[..., Any], *args: torch.Tensor) -> Dict[str, Any]:
    """Training activation memory of fn(*args) with grad mode on (see the module docstring): a
    storage saved by a part of the graph that the forward itself dropped is not counted."""
    existing = {t.untyped_storage()._cdata for t in args if isinstance(t, torch.Tensor)}
    if isinstance(fn, torch.nn.Module):
        existing |= {t.untyped_storage()._cdata for t in list(fn.parameters()) + list(fn.buffers())}
    saved: Dict[int, "weakref.ref[torch.UntypedStorage]"] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in existing:
            saved[storage._cdata] = weakref.ref(storage)
        return t.detach()  # the same storage; without its grad_fn, so no reference cycle outlives the graph

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = fn(*args)  # holds the graph, and so its saved tensors, while they are counted
    held = [s for s in (ref() for ref in saved.values()) if s is not None]
    del output
    return {"saved_activation_bytes": sum(s.nbytes() for s in held), "saved_storages": len(held),
            "memory_method": TRAINING_METHOD}


def measurement_device(tower: torch.nn.Module, attention: str, device: Optional[str] = None) -> str:
    """Where a memory measurement runs: `device`, by default the tower's own; the CPU for fused
    attention asked for on the meta device (no fused kernels there)."""
    device = device or str(next(tower.parameters()).device)
    return "cpu" if attention == "fused" and device == "meta" else device


def training_activation_memory(tower: torch.nn.Module, make_input: Callable[[str], torch.Tensor],
                               attention: str = "default", device: Optional[str] = None) -> Dict[str, Any]:
    """Training activation bytes of tower(make_input(device)) in train mode under the attention
    backend, on `device` (the tower's own, or 'meta' for shapes only), and the attention kernels
    that ran. The tower's own train/eval mode is left as it was."""
    device = measurement_device(tower, attention, device)
    module = placed(tower, device)
    was_training = module.training
    ops = PeakMemoryTracker()
    try:
        with attention_backend(attention), ops:
            r = measure_saved_activations(module.train(), make_input(device))
    finally:
        module.train(was_training)
    return {"training_activation_bytes": r["saved_activation_bytes"], "saved_storages": r["saved_storages"],
            "attention": attention, "training_attention_kernels": ops.attention_kernels(),
            "training_memory_device": device, "training_memory_method": r["memory_method"]}


def inference_peak_memory(tower: torch.nn.Module, make_input: Callable[[str], torch.Tensor],
                          attention: str = "default", device: Optional[str] = None) -> Dict[str, Any]:
    """Peak activation bytes of one no-grad forward of the tower in eval mode under the attention
    backend (climp.eval.efficiency.measure_peak_memory), on `device` as above."""
    device = measurement_device(tower, attention, device)
    module = placed(tower, device)
    was_training = module.training
    try:
        with attention_backend(attention):
            r = measure_peak_memory(module.eval(), make_input(device))
    finally:
        module.train(was_training)
    return {**r, "attention": attention, "memory_device": device}
