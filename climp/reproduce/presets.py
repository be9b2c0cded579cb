"""Settings of `climp reproduce` as data: how long to train, how much to evaluate, how hard to
probe the Hessian. Every preset trains the same models on the same data with the same steps and
seeds; only the sizes differ.

- smoke: seconds per stage; checks that the pipeline runs end to end (tests).
- quick: one seed, short training, small evaluation sets, a cheap Hessian (<= 15 min, 2 cores).
- full: three seeds, longer training, larger evaluation sets (<= 2 h, 2 cores).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

# the papers' CLIMP (climp-tiny-paper), our pyramid-pooling variant, the ViT baseline, a 1D Mamba
DEFAULT_MODELS: Tuple[str, ...] = ("climp-tiny-paper", "climp-tiny", "clip-vit-tiny", "climp-mamba1d-tiny")
CLIP_MAMBA_SHIFTS: Tuple[str, ...] = ("contrast", "high_pass", "low_pass", "uniform_noise", "phase_scrambling")


@dataclass(frozen=True)
class Preset:
    """One reproduction recipe.

    train: TrainConfig values shared by every (model, seed) run (model, seed, output_dir, name
    and resume are set per run); spurious_training: train on the spurious split (background tied
    to the shape), which the worst-group claim needs; eval_tasks / eval: climp.eval tasks and
    EvalSettings values; hessian: HessianSettings values; hessian_data: the contrastive batches
    (num_batches, batch_size) and the parameters differentiated; bench: the efficiency benchmark's
    image sides, text lengths, batch and timing repeats.
    """

    name: str
    seeds: Tuple[int, ...]
    train: Dict[str, Any]
    spurious_training: bool
    eval_tasks: Tuple[str, ...]
    eval: Dict[str, Any]
    hessian: Dict[str, Any]
    hessian_data: Dict[str, Any]
    bench: Dict[str, Any]
    budget_minutes: float
    description: str = ""

    def validate(self) -> None:
        """Build every settings object once so a bad key or value fails before any training."""
        from climp.analysis.hessian import HessianSettings
        from climp.eval.bench import BenchSettings
        from climp.eval.runner import TASKS, EvalSettings
        from climp.settings import from_values
        from climp.train.config import TrainConfig

        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"preset {self.name!r}: seeds must be distinct and non-empty, got {self.seeds}")
        reserved = {"model", "seed", "output_dir", "name", "resume"} & set(self.train)
        if reserved:
            raise ValueError(f"preset {self.name!r}: train settings {sorted(reserved)} are set per run")
        TrainConfig.from_dict(self.train)
        unknown = [t for t in self.eval_tasks if t not in TASKS]
        if unknown or not self.eval_tasks:
            raise ValueError(f"preset {self.name!r}: unknown or no eval tasks {unknown}; choose from {TASKS}")
        EvalSettings.from_dict(self.eval)
        HessianSettings.from_dict(self.hessian)
        bad = set(self.hessian_data) - {"num_batches", "batch_size", "params"}
        if bad:
            raise ValueError(f"preset {self.name!r}: unknown hessian_data keys {sorted(bad)}")
        bad = set(self.bench) - {"image_sizes", "text_lengths", "batch", "repeats", "throughput"}
        if bad:
            raise ValueError(f"preset {self.name!r}: unknown bench keys {sorted(bad)}")
        from_values(BenchSettings, self.bench, f"preset {self.name!r} bench")


def _train(**values: Any) -> Dict[str, Any]:
    # lr 1e-3 as the main job, with a 10% warm-up: at 2e-3 short runs collapsed to the chance
    # loss log(batch) within ten steps
    shared = dict(resolution=64, caption_style="mixed", lr=1e-3, eval_every=0, log_every=5, progress=True,
                  device="cpu")
    return {**shared, **values}


PRESETS: Dict[str, Preset] = {p.name: p for p in [
    Preset(
        name="smoke",
        description="a few steps and a handful of samples: checks the pipeline, measures nothing",
        seeds=(0,),
        train=_train(steps=2, batch_size=8, warmup=1, train_samples=64, eval_samples=8,
                     retrieval_samples=8, save_every=1, log_every=1),
        spurious_training=True,
        eval_tasks=("zeroshot", "retrieval", "shifts", "spurious", "ood", "resolution", "dense", "hubness",
                    "shape_bias", "caption_shifts"),
        eval=dict(num_samples=12, batch_size=12, captions_per_image=2, shifts=["contrast", "low_pass"],
                  resolution_scales=[1, 2], hubness_k=3),
        hessian=dict(top_k=1, lanczos_steps=2, hutchinson_samples=2, slq_runs=2, slq_steps=2, landscape="none",
                     progress=False),
        hessian_data=dict(num_batches=1, batch_size=2, params=["visual"]),
        bench=dict(image_sizes=[64], text_lengths=[16], batch=1, repeats=1, throughput=False),
        budget_minutes=5,
    ),
    Preset(
        name="quick",
        description="one seed, short training, small evaluation sets, a cheap Hessian",
        seeds=(0,),
        train=_train(steps=450, batch_size=32, warmup=20, train_samples=14400, eval_samples=32,
                     retrieval_samples=32, save_every=100),
        spurious_training=True,
        eval_tasks=("zeroshot", "retrieval", "shifts", "spurious", "ood", "resolution", "dense", "hubness",
                    "shape_bias", "caption_shifts"),
        eval=dict(num_samples=48, batch_size=48, captions_per_image=2, shifts=list(CLIP_MAMBA_SHIFTS),
                  resolution_scales=[1, 2, 4], hubness_k=10),
        hessian=dict(top_k=1, lanczos_steps=5, hutchinson_samples=3, slq_runs=4, slq_steps=30, landscape="none",
                     hvp="auto", progress=True),
        hessian_data=dict(num_batches=1, batch_size=4, params=["visual"]),
        bench=dict(image_sizes=[64, 128, 256], text_lengths=[77, 256], batch=1, repeats=1, throughput=True),
        budget_minutes=15,
    ),
    Preset(
        name="full",
        description="three seeds, longer training, larger evaluation sets, a finer Hessian",
        seeds=(0, 1, 2),
        train=_train(steps=1400, batch_size=32, warmup=110, train_samples=44800, eval_samples=64,
                     retrieval_samples=64, save_every=100),
        spurious_training=True,
        eval_tasks=("zeroshot", "retrieval", "shifts", "spurious", "ood", "resolution", "dense", "hubness",
                    "shape_bias", "caption_shifts"),
        eval=dict(num_samples=200, batch_size=64, captions_per_image=5,
                  shifts=list(CLIP_MAMBA_SHIFTS) + ["greyscale", "false_colour", "power_equalisation", "rotation"],
                  resolution_scales=[1, 2, 4], hubness_k=10),
        hessian=dict(top_k=2, lanczos_steps=10, hutchinson_samples=5, slq_runs=4, slq_steps=60, landscape="1d",
                     landscape_steps=7, hvp="auto", progress=True),
        hessian_data=dict(num_batches=1, batch_size=4, params=["visual"]),
        bench=dict(image_sizes=[64, 128, 256, 512], text_lengths=[77, 256, 1024], batch=1, repeats=2,
                   throughput=True),
        budget_minutes=120,
    ),
]}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_names() -> List[str]:
    return list(PRESETS)
