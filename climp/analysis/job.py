"""`run_hessian(job)`: the curvature of the contrastive loss of one model, or two side by side on
the same samples of the embedded benchmark; writes results.json, density.png and the landscape
plot. `climp hessian` is this function behind the flags of `HessianJob`."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..settings import setting
from .contrastive import ContrastiveLoss, make_batches, synthetic_samples
from .params import TOKEN_EMBEDDINGS, token_embeddings
from .plots import plot_results
from .hessian import HessianSettings, analyse_hessian, format_table

Loaded = Tuple[nn.Module, Callable[[Any], torch.Tensor], Callable[[List[str]], torch.Tensor], int]
MODELS, DATA, RUN = "models", "data", "output and machine"


@dataclass
class HessianJob:
    """Which models, on which batches of the embedded benchmark, with which analysis settings."""

    model: Optional[str] = setting(None, group=MODELS, required=True, help=(
        "model name (see `climp models`) or JSON config path"))
    checkpoint: Optional[str] = setting(None, group=MODELS, metavar="PATH", help=(
        "checkpoint directory or weights file (default: random init)"))
    compare: Optional[str] = setting(None, group=MODELS, metavar="NAME2", help=(
        "second model, analysed on the same samples"))
    checkpoint2: Optional[str] = setting(None, group=MODELS, metavar="PATH", help="checkpoint of the --compare model")
    num_batches: int = setting(1, group=DATA, help="batches the loss is averaged over")
    batch_size: int = setting(8, group=DATA, help="samples per contrastive batch")
    resolution: Optional[int] = setting(None, group=DATA, help="image size (default: the model's own)")
    caption_style: str = setting("short", group=DATA, help="embedded benchmark caption style")
    params: List[str] = setting(default_factory=lambda: ["all"], group=DATA, list_style="nargs", help=(
        "parameters to differentiate: all, visual, text, module paths or name prefixes"))
    exclude: Optional[List[str]] = setting(None, group=DATA, list_style="nargs", help=(
        "module paths / name prefixes to leave out, or 'none'. Default: the token embedding "
        f"({' or '.join(TOKEN_EMBEDDINGS)}), whose rows for tokens absent from the batches only add "
        "exact zero eigenvalues and would dilute the density and negative mass"))
    output_dir: str = setting("runs/hessian", group=RUN, metavar="DIR", help="where results.json and the plots go")
    device: str = setting("cpu", group=RUN, help="torch device")
    threads: int = setting(1, group=RUN, help=(
        "torch CPU threads for the analysis; Hessian-vector products over one small batch of a tiny "
        "model gain little from more, so raise it for big models"))
    settings: HessianSettings = setting(default_factory=HessianSettings, help="the analysis' own settings")

    def __post_init__(self) -> None:
        if self.checkpoint2 is not None and self.compare is None:
            raise ValueError("--checkpoint2 needs --compare NAME2")
        if self.num_batches < 1:
            raise ValueError(f"--num-batches must be >= 1, got {self.num_batches}")
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")


def exclusions(exclude: Optional[List[str]], model: nn.Module) -> List[str]:
    """--exclude as names: None (the default) is the model's token embedding, 'none' nothing."""
    if exclude is None:
        return token_embeddings(model)
    if [name.lower() for name in exclude] == ["none"]:
        return []
    if any(name.lower() == "none" for name in exclude):
        raise ValueError(f"--exclude none cannot be combined with other names, got {exclude}")
    return list(exclude)


def load_model(name: str, checkpoint: Optional[str], resolution: Optional[int], device: str) -> Loaded:
    """(model, eval transform, tokenizer, image size) from the climp model factory."""
    import climp
    from climp.models.factory import image_size_of

    if checkpoint is not None and not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    model, _, preprocess = climp.create_model_and_transforms(name, pretrained=checkpoint, image_size=resolution)
    return model.to(device), preprocess, climp.get_tokenizer(model), resolution or image_size_of(model)[0]


def unique_label(name: str, checkpoint: Optional[str], taken: Dict[str, Any]) -> str:
    label = name if checkpoint is None else f"{name} ({Path(checkpoint).name})"
    return label if label not in taken else f"{label} #2"


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch.set_num_threads(count) for the duration, restored afterwards."""
    if count < 1:
        raise ValueError(f"--threads must be >= 1, got {count}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_hessian(job: HessianJob) -> Dict[str, Any]:
    """Load each model, build its batches, analyse it, then print and write the results; returns
    {label: result}."""
    with torch_threads(job.threads):
        return _analyse_models(job)


def _analyse_models(job: HessianJob) -> Dict[str, Any]:
    seed = job.settings.seed
    specs = [(job.model, job.checkpoint)] + ([(job.compare, job.checkpoint2)] if job.compare else [])
    out_dir = Path(job.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    results: Dict[str, Dict[str, Any]] = {}
    samples_by_size: Dict[int, list] = {}
    for name, checkpoint in specs:
        model, preprocess, tokenizer, size = load_model(name, checkpoint, job.resolution, job.device)
        if size not in samples_by_size:
            samples_by_size[size] = synthetic_samples(job.num_batches * job.batch_size, size, seed,
                                                      job.caption_style)
        batches = make_batches(samples_by_size[size], preprocess, tokenizer, job.batch_size, job.device)
        label = unique_label(name, checkpoint, results)
        print(f"analysing {label} ...", flush=True)
        excluded = exclusions(job.exclude, model)
        result = analyse_hessian(model, batches, ContrastiveLoss(), job.params, job.settings, excluded)
        for warning in result["warnings"]:
            print(f"WARNING ({label}): {warning}", flush=True)
        results[label] = {"model": name, "checkpoint": checkpoint, "image_size": size, "excluded": excluded, **result}
    print(format_table(results))
    (out_dir / "results.json").write_text(json.dumps({"models": results, "torch_threads": job.threads}, indent=1))
    paths = plot_results(results, out_dir)
    print(f"wrote {out_dir / 'results.json'} and {', '.join(str(p) for p in paths)}")
    return results
