"""FLOPs, inference peak memory, training activation memory and throughput of image towers across
resolutions and text towers across lengths, under a chosen attention backend, for several models in
one run, with ratios (other / first model), a table and log-log plots. `run_bench(settings)` is the
entry point; `climp bench` is it behind the flags of `BenchSettings`.

`claim` reproduces CLIMP's efficiency claim: VMamba-B vs ViT-B/16 image towers at 224 and 896
pixels (16x the training pixels), FLOPs counted on the meta device and memory at batch 1."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..settings import setting
from .activation_memory import (ATTENTION_BACKENDS, attention_backend, measurement_device,
                                training_activation_memory)
from .efficiency import profile_tower, token_batch

CLAIM_MODELS = ["climp-vmamba-b", "clip-vit-b-16"]
CLAIM_SIDES = [224, 896]
TOWERS = ("image", "text")
RATIO_KEYS = ("flops", "peak_activation_bytes", "training_activation_bytes", "seconds_per_batch")


@dataclass
class BenchSettings:
    """Which models and towers to profile, at which sizes, and how."""

    models: List[str] = setting(default_factory=lambda: ["climp-tiny", "clip-vit-tiny"], help=(
        "model names, comma separated; the first is compared against the others"))
    image_sizes: List[int] = setting(default_factory=lambda: [64, 128, 256, 512], help="image sides to profile")
    text_lengths: List[int] = setting(default_factory=lambda: [77, 256, 1024, 2048], help="text lengths to profile")
    towers: List[str] = setting(default_factory=lambda: list(TOWERS), choices=TOWERS, help="towers to profile")
    batch: int = setting(1, help="batch for memory and throughput")
    memory_device: Optional[str] = setting(None, help="'meta' to count memory without computing")
    throughput: bool = setting(True, help="time the towers (--no-throughput: FLOPs and memory only)")
    training_memory: bool = setting(True, help=(
        "also measure training activation memory, what one forward keeps for the backward "
        "(--no-training-memory: skip)"))
    attention: str = setting("default", choices=ATTENTION_BACKENDS, help=(
        "attention backend of Transformer towers: math (materialised attention matrix), fused (PyTorch's "
        "fused CPU kernels; memory is then measured on the CPU) or default (PyTorch's choice)"))
    repeats: int = setting(3, help="timing repeats")
    claim: bool = setting(False, help=f"preset: {' vs '.join(CLAIM_MODELS)} image towers at {CLAIM_SIDES}")
    out: Optional[Path] = setting(None, required=True, metavar="DIR", help="output directory")

    def __post_init__(self) -> None:
        for key in ("batch", "repeats"):
            if getattr(self, key) < 1:
                raise ValueError(f"bench {key} must be >= 1, got {getattr(self, key)}")
        for key in ("image_sizes", "text_lengths"):
            if any(v < 1 for v in getattr(self, key)):
                raise ValueError(f"bench {key} must be positive, got {getattr(self, key)}")
        unknown = [t for t in self.towers if t not in TOWERS]
        if unknown or not self.towers:
            raise ValueError(f"unknown or no bench towers {unknown}; choose from {list(TOWERS)}")

    def resolved(self) -> "BenchSettings":
        """The settings with the claim preset applied when `claim` is set."""
        if not self.claim:
            return self
        return dataclasses.replace(self, models=list(CLAIM_MODELS), image_sizes=list(CLAIM_SIDES), towers=["image"])


def text_cfg_for_lengths(name: str, longest: int) -> Dict[str, Any]:
    """Transformer text towers get a context as long as the longest benchmarked text (same weights
    shapes apart from the position table), so their cost can be measured at every length."""
    from climp.models.factory import get_model_config
    text_cfg = get_model_config(name)["text_cfg"]
    if text_cfg.get("type") == "transformer" and text_cfg.get("context_length", 77) < longest:
        return {"text_cfg": {"context_length": longest}}
    return {}


def profile(tower: torch.nn.Module, make_input: Callable[[Any, int], torch.Tensor], settings: BenchSettings,
            flops_device: str = "meta", memory_device: Optional[str] = None) -> Dict[str, Any]:
    """profile_tower under the settings' attention backend, plus training activation memory."""
    memory_device = measurement_device(tower, settings.attention, memory_device)
    with attention_backend(settings.attention):
        out = profile_tower(tower, make_input, batch=settings.batch, flops_device=flops_device,
                            memory_device=memory_device, throughput=settings.throughput, repeats=settings.repeats)
    out["attention"] = settings.attention
    if settings.training_memory:
        out.update(training_activation_memory(tower, lambda dev: make_input(dev, settings.batch), settings.attention,
                                              memory_device))
    return out


def bench_model(name: str, settings: BenchSettings) -> Dict[str, Any]:
    """{tower: {size: profile}} of one model's towers under the settings."""
    import climp
    model = climp.create_model(name, **(text_cfg_for_lengths(name, max(settings.text_lengths))
                                        if "text" in settings.towers else {})).eval()
    out: Dict[str, Any] = {}
    if "image" in settings.towers:
        out["image"] = {str(side): profile(model.visual, lambda dev, n, s=side: torch.zeros(n, 3, s, s, device=dev),
                                           settings, memory_device=settings.memory_device)
                        for side in settings.image_sizes}
    if "text" in settings.towers:
        # text towers read token values (validation, end-token pooling), so they run for real
        out["text"] = {str(length): profile(model.text, lambda dev, n, l=length: token_batch(n, l, dev), settings,
                                            flops_device="cpu")
                       for length in settings.text_lengths}
    return out


def ratios(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """other / first model for FLOPs, memory and time, per tower and size: >1 means the first is cheaper."""
    names = list(results)
    first, out = names[0], {}
    for other in names[1:]:
        for tower, sizes in results[first].items():
            for size, a in sizes.items():
                b = results[other].get(tower, {}).get(size)
                if b is None:
                    continue
                row = {k: b[k] / a[k] for k in RATIO_KEYS
                       if k in a and k in b and a[k]}
                out[f"{other} / {first} {tower} @ {size}"] = row
    return out


def plot(results: Dict[str, Dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [("flops", "FLOPs / item"), ("peak_activation_bytes", "inference peak activation bytes"),
               ("training_activation_bytes", "training activation bytes"), ("items_per_second", "items / s")]
    towers = sorted({t for r in results.values() for t in r})
    fig, axes = plt.subplots(len(towers), len(metrics), figsize=(16, 3.2 * len(towers)), squeeze=False)
    for row, tower in zip(axes, towers):
        for ax, (key, label) in zip(row, metrics):
            for name, r in results.items():
                pts = [(int(s), v[key]) for s, v in r.get(tower, {}).items() if key in v]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("image side" if tower == "image" else "text length")
            ax.set_ylabel(label)
            ax.set_title(f"{tower} tower")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def attention_text(v: Dict[str, Any]) -> str:
    """The backend asked for and the attention kernels that ran ('-' for towers without attention)."""
    inference, training = v.get("attention_kernels", []), v.get("training_attention_kernels", [])
    if not inference and not training:
        return "-"
    ran = ", ".join(inference or training)
    if inference and training and training != inference:
        ran = f"inference {ran}; training {', '.join(training)}"
    return f"{v['attention']}: {ran}" if "attention" in v else ran


def markdown(results: Dict[str, Dict[str, Any]], rel: Dict[str, Any]) -> str:
    lines = ["| model | tower | size | GFLOPs | inference peak act. MiB | training act. MiB | items/s | attention |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for tower, sizes in r.items():
            for size, v in sizes.items():
                ips = f"{v['items_per_second']:.3g}" if "items_per_second" in v else "-"
                train = (f"{v['training_activation_bytes'] / 2 ** 20:.4g}" if "training_activation_bytes" in v
                         else "-")
                lines.append(f"| {name} | {tower} | {size} | {v['flops'] / 1e9:.3g} | "
                             f"{v['peak_activation_bytes'] / 2 ** 20:.4g} | {train} | {ips} | {attention_text(v)} |")
    lines += ["", "| ratio (other / first) | FLOPs | inference memory | training memory | time |",
              "|---|---|---|---|---|"]
    for label, row in rel.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[k]:.3g}" if k in row else "-" for k in RATIO_KEYS) + " |")
    return "\n".join(lines) + "\n"


def run_bench(settings: BenchSettings) -> Dict[str, Any]:
    """Profile every model; writes bench.json, bench.md and bench.png into settings.out and returns
    {"results", "ratios", "markdown"}."""
    settings = settings.resolved()
    results = {name: bench_model(name, settings) for name in settings.models}
    rel = ratios(results)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    recorded = {k: str(v) for k, v in dataclasses.asdict(settings).items()}
    (out / "bench.json").write_text(json.dumps({"args": recorded, "results": results, "ratios": rel}, indent=2))
    table = markdown(results, rel)
    (out / "bench.md").write_text(table)
    plot(results, out / "bench.png")
    return {"results": results, "ratios": rel, "markdown": table}
