"""The stages of a reproduction, each a thin call into the library's own entry points: training
(climp.train.trainer.train), evaluation (climp.eval.evaluate), the Hessian analysis
(climp.analysis.analyse_hessian), the efficiency benchmark (climp.eval.bench.bench_model) and the
training activation memory of the image tower (climp.eval.activation_memory)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from .presets import Preset

TRAIN, EVAL, HESSIAN, BENCH, MEMORY = "train", "eval", "hessian", "bench", "train_memory"
SEED_STAGES = (TRAIN, EVAL, HESSIAN)  # once per (model, seed), in this order
MODEL_STAGES = (BENCH, MEMORY)  # once per model: costs do not depend on the trained weights
# training activation memory: batch 1, the training side and 4x it (16x the pixels), attention
# materialised (the CLIMP paper's comparison) and fused
MEMORY_SETTINGS: Dict[str, Any] = {"batch": 1, "scales": [1, 4], "attention": ["math", "fused"]}


@dataclass
class Job:
    """What a stage needs: the model, the seed (None for per-model stages), the preset, the output
    directory, the results of the stages before it ({stage: result}), and whether progress bars
    may show (False silences the preset's own bars without changing what the stage computes)."""

    model: str
    seed: Optional[int]
    preset: Preset
    out_dir: Path
    upstream: Dict[str, Any] = field(default_factory=dict)
    progress: bool = True


StageFn = Callable[[Job], Dict[str, Any]]


def stage_settings(stage: str, preset: Preset) -> Dict[str, Any]:
    """The preset values a stage's result depends on; a stored result is reused only when they match."""
    if stage == TRAIN:
        return {"train": preset.train, "spurious_training": preset.spurious_training}
    if stage == EVAL:
        return {"tasks": list(preset.eval_tasks), "eval": preset.eval, "train": preset.train}
    if stage == HESSIAN:
        return {"hessian": preset.hessian, "data": preset.hessian_data, "train": preset.train}
    if stage == BENCH:
        return {"bench": preset.bench}
    if stage == MEMORY:
        return {"training_memory": MEMORY_SETTINGS, "side": training_side(preset)}
    raise ValueError(f"unknown stage {stage!r}")


def train_run_name(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def train_stage(job: Job) -> Dict[str, Any]:
    """Train (or finish training) one model with one seed; resumes from the run's latest checkpoint."""
    import torch
    from climp.data.synthetic import SyntheticScenes
    from climp.train.checkpoint import LATEST_FILE
    from climp.train.config import TrainConfig
    from climp.train.trainer import build_components, train

    values = {**job.preset.train, "model": job.model, "seed": job.seed, "output_dir": str(job.out_dir / "train"),
              "name": train_run_name(job.model, job.seed),
              "progress": job.preset.train.get("progress", True) and job.progress}
    config = TrainConfig.from_dict(values)
    if (config.run_dir / "checkpoints" / LATEST_FILE).is_file():
        config = TrainConfig.from_dict({**values, "resume": "latest"})
    components = None
    if job.preset.spurious_training:
        torch.manual_seed(config.seed)  # the trainer seeds exactly so before building a model itself
        components = build_components(config)
        spurious = SyntheticScenes(split="train", num_samples=config.train_samples, resolution=config.resolution,
                                   seed=config.seed, caption_style=config.caption_style,
                                   partial_captions=config.partial_captions,
                                   hard_negatives=config.hard_negatives,
                                   transform=components.train_dataset.transform, spurious=True)
        components = dataclasses.replace(components, train_dataset=spurious)
    result = train(config, components)
    return {**result, "run_dir": str(config.run_dir)}


def load_trained(job: Job):
    """(model, eval preprocess, tokenizer) from the checkpoint the train stage wrote."""
    import climp

    checkpoint = job.upstream[TRAIN]["checkpoint"]
    model, _, preprocess = climp.create_model_and_transforms(job.model, pretrained=checkpoint)
    return model.eval(), preprocess, climp.get_tokenizer(model)


def eval_stage(job: Job) -> Dict[str, Any]:
    """The whole evaluation suite of the preset on the trained model."""
    from climp.eval import EvalSettings, evaluate

    model, preprocess, tokenizer = load_trained(job)
    return evaluate(model, tokenizer, preprocess, list(job.preset.eval_tasks), EvalSettings.from_dict(job.preset.eval))


def hessian_stage(job: Job) -> Dict[str, Any]:
    """Hessian spectrum of the contrastive loss on batches of the run's own training data."""
    from climp.analysis import ContrastiveLoss, HessianSettings, analyse_hessian, make_batches
    from climp.analysis.contrastive import synthetic_samples
    from climp.models.factory import image_size_of

    model, preprocess, tokenizer = load_trained(job)
    data = job.preset.hessian_data
    side = image_size_of(model)[0]
    samples = synthetic_samples(data["num_batches"] * data["batch_size"], side, job.seed,
                                job.preset.train.get("caption_style", "short"))
    batches = make_batches(samples, preprocess, tokenizer, data["batch_size"])
    settings = HessianSettings.from_dict({**job.preset.hessian, "seed": job.seed,
                                          "progress": job.preset.hessian.get("progress", True) and job.progress})
    result = analyse_hessian(model, batches, ContrastiveLoss(), list(data["params"]), settings)
    result.pop("parameter_names", None)  # thousands of names; the selection is in the settings
    return result


def bench_settings(preset: Preset, model: str):
    """The preset's benchmark as BenchSettings for one model, both towers."""
    from climp.eval.bench import TOWERS, BenchSettings
    from climp.settings import from_values

    return from_values(BenchSettings, {**preset.bench, "models": [model], "towers": list(TOWERS)},
                       f"preset {preset.name!r} bench")


def bench_stage(job: Job) -> Dict[str, Any]:
    """FLOPs, peak memory and throughput of both towers across image sides and text lengths."""
    from climp.eval.bench import bench_model

    return bench_model(job.model, bench_settings(job.preset, job.model))


def training_side(preset: Preset) -> Optional[int]:
    """The side the preset trains at (None: each model's own nominal side)."""
    return preset.train.get("resolution")


def memory_stage(job: Job) -> Dict[str, Any]:
    """Training activation memory of the image tower (what one forward keeps for the backward) at
    the settings of MEMORY_SETTINGS, on the CPU: {"train_side", "batch", "sides": {side: {"scale",
    "pixels_ratio", attention backend: measurement}}}."""
    import climp
    import torch
    from climp.eval.activation_memory import training_activation_memory
    from climp.eval.runner import model_image_side

    torch.manual_seed(0)
    model = climp.create_model(job.model)
    visual = model.visual
    side = training_side(job.preset) or model_image_side(model)
    batch = MEMORY_SETTINGS["batch"]
    out: Dict[str, Any] = {"train_side": side, "batch": batch, "sides": {}}
    for scale in MEMORY_SETTINGS["scales"]:
        s = side * scale
        row: Dict[str, Any] = {"scale": scale, "pixels_ratio": scale ** 2}
        for kind in MEMORY_SETTINGS["attention"]:
            row[kind] = training_activation_memory(visual, lambda dev: torch.zeros(batch, 3, s, s, device=dev), kind)
        out["sides"][str(s)] = row
    return out


STAGE_FUNCTIONS: Mapping[str, StageFn] = {TRAIN: train_stage, EVAL: eval_stage, HESSIAN: hessian_stage,
                                          BENCH: bench_stage, MEMORY: memory_stage}
