"""`climp train`: flags, an optional recipe file, and the results table at the end."""
from __future__ import annotations

import argparse

from ..settings import add_settings_arguments, explicit_values
from .config import TrainConfig, resolve_config

DESCRIPTION = """Train a CLIP-style dual encoder with a contrastive loss.

With no arguments: trains climp-tiny (VMamba image tower + Mamba text tower) on the embedded
synthetic-scenes benchmark on the CPU, then prints zero-shot and retrieval results and writes
runs/<name>/results.json, metrics.jsonl, loss_curve.png and checkpoints/. The same command
under `torchrun --nproc_per_node N` trains with DistributedDataParallel (gloo on the CPU,
nccl on GPUs). Explicit flags override values from --config."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every TrainConfig field as a flag (help from its metadata) plus --config."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_settings_arguments(parser, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config recipe < flags given explicitly."""
    return resolve_config(explicit_values(args, TrainConfig), getattr(args, "config", None))


def run(args: argparse.Namespace) -> int:
    from .trainer import format_results, train

    config = config_from_args(args)
    results = train(config)
    if results:
        print(format_results(results))
        print(f"results: {config.run_dir / 'results.json'}")
    return 0
