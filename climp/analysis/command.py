"""`climp hessian`: curvature of the contrastive loss of one model, or two side by side.

Defaults analyse all parameters but the token embedding over 1 batch of 8 samples of the
embedded benchmark at the model's nominal resolution, with finite-difference Hessian-vector
products, and write results.json, density.png and the landscape plot.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from .contrastive import ContrastiveLoss, make_batches, synthetic_samples
from .plots import plot_results
from .hvp import HVP_METHODS
from .params import TOKEN_EMBEDDINGS, token_embeddings
from .report import DIRECTION_KINDS, LANDSCAPE_MODES, HessianSettings, analyse_hessian, format_table

Loaded = Tuple[nn.Module, Callable[[Any], torch.Tensor], Callable[[List[str]], torch.Tensor], int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = HessianSettings()
    parser.add_argument("--model", required=True, help="model name (see `climp models`) or JSON config path")
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory or weights file (default: random init)")
    parser.add_argument("--compare", default=None, metavar="NAME2", help="second model, analysed on the same samples")
    parser.add_argument("--checkpoint2", default=None, help="checkpoint of the --compare model")
    data = parser.add_argument_group("data")
    data.add_argument("--num-batches", type=int, default=1, help="batches the loss is averaged over")
    data.add_argument("--batch-size", type=int, default=8, help="samples per contrastive batch")
    data.add_argument("--resolution", type=int, default=None, help="image size (default: the model's own)")
    data.add_argument("--caption-style", default="short", help="embedded benchmark caption style")
    data.add_argument("--params", nargs="+", default=["all"],
                      help="parameters to differentiate: all, visual, text, module paths or name prefixes")
    data.add_argument("--exclude", nargs="+", default=None,
                      help="module paths / name prefixes to leave out, or 'none'. Default: the token "
                           f"embedding ({' or '.join(TOKEN_EMBEDDINGS)}), whose rows for tokens absent "
                           "from the batches only add exact zero eigenvalues (6.3M of climp-tiny's 8.6M "
                           "parameters) and would dilute the density and negative mass")
    hess = parser.add_argument_group("Hessian")
    hess.add_argument("--top-k", type=int, default=defaults.top_k, help="top eigenvalues to compute")
    hess.add_argument("--lanczos-steps", type=int, default=defaults.lanczos_steps, help="max Lanczos steps (products)")
    hess.add_argument("--lanczos-tol", type=float, default=defaults.lanczos_tol, help="relative Ritz residual to stop at")
    hess.add_argument("--hutchinson-samples", type=int, default=defaults.hutchinson_samples, help="trace probes")
    hess.add_argument("--confidence", type=float, default=defaults.confidence, help="trace confidence level")
    hess.add_argument("--slq-runs", type=int, default=defaults.slq_runs,
                      help="SLQ runs (Rademacher probes, >= 2) for the density and the negative mass")
    hess.add_argument("--slq-steps", type=int, default=defaults.slq_steps,
                      help="Lanczos steps per SLQ run (more resolve the negative mass at smaller thresholds)")
    hess.add_argument("--negative-threshold", type=float, default=defaults.negative_threshold,
                      help="negative mass counts eigenvalues below -this * max|lambda| (keep it above the "
                           "products' relative error, ~2e-4 for float32 finite differences)")
    hess.add_argument("--density-sigma", type=float, default=defaults.density_sigma,
                      help="Gaussian broadening std, relative to the spectral range")
    hess.add_argument("--hvp", choices=HVP_METHODS, default=defaults.hvp,
                      help="Hessian-vector products by central finite differences of gradients (2 fast "
                           "gradients each, error ~2e-4 of ||H|| in float32) or exact double backward "
                           "(through a selective scan it needs the pure-PyTorch scan: 4-6x slower on climp-tiny)")
    hess.add_argument("--fd-eps-rel", type=float, default=None,
                      help="finite-difference step relative to 1 + rms(theta) (default: 3e-4 float32, 1e-7 float64)")
    hess.add_argument("--cache-graph", action="store_true",
                      help="with --hvp autograd: keep each batch's gradient graph between products "
                           "(faster, more memory)")
    land = parser.add_argument_group("loss landscape")
    land.add_argument("--landscape", choices=LANDSCAPE_MODES, default=defaults.landscape, help="slice dimension")
    land.add_argument("--landscape-directions", choices=DIRECTION_KINDS, default=defaults.landscape_directions,
                      help="top eigenvectors (unit norm) or filter-normalised random directions")
    land.add_argument("--landscape-steps", type=int, default=defaults.landscape_steps, help="grid points per axis")
    land.add_argument("--landscape-range", type=float, default=defaults.landscape_range,
                      help="slice coordinates run over [-range, range]")
    land.add_argument("--ignore-1d", action="store_true",
                      help="random directions leave biases, norms and scalars unchanged (Li et al.)")
    parser.add_argument("--output-dir", default="runs/hessian", help="where results.json and the plots go")
    parser.add_argument("--seed", type=int, default=0, help="data and random-vector seed")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: products over one small batch of a tiny model "
                             "gain little from more, and extra threads slow them on a busy machine; raise it "
                             "for big models on idle cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def settings_from_args(args: argparse.Namespace) -> HessianSettings:
    return HessianSettings(
        top_k=args.top_k, lanczos_steps=args.lanczos_steps, lanczos_tol=args.lanczos_tol,
        hutchinson_samples=args.hutchinson_samples, confidence=args.confidence,
        slq_runs=args.slq_runs, slq_steps=args.slq_steps, density_sigma=args.density_sigma,
        negative_threshold=args.negative_threshold,
        landscape=args.landscape, landscape_directions=args.landscape_directions,
        landscape_steps=args.landscape_steps, landscape_range=args.landscape_range,
        ignore_1d=args.ignore_1d, seed=args.seed, hvp=args.hvp, fd_eps_rel=args.fd_eps_rel,
        cache_graph=args.cache_graph, progress=not args.no_progress,
    )


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
    return model.to(device), preprocess, climp.get_tokenizer(name), resolution or image_size_of(model)[0]


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


def run(args: argparse.Namespace) -> int:
    if args.checkpoint2 is not None and args.compare is None:
        raise ValueError("--checkpoint2 needs --compare NAME2")
    if args.num_batches < 1:
        raise ValueError(f"--num-batches must be >= 1, got {args.num_batches}")
    settings = settings_from_args(args)
    with torch_threads(args.threads):
        return analyse_models(args, settings)


def analyse_models(args: argparse.Namespace, settings: HessianSettings) -> int:
    """Load each model, build its batches, analyse it, then print and write the results."""
    specs = [(args.model, args.checkpoint)] + ([(args.compare, args.checkpoint2)] if args.compare else [])
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    results: Dict[str, Dict[str, Any]] = {}
    samples_by_size: Dict[int, list] = {}
    for name, checkpoint in specs:
        model, preprocess, tokenizer, size = load_model(name, checkpoint, args.resolution, args.device)
        if size not in samples_by_size:
            samples_by_size[size] = synthetic_samples(args.num_batches * args.batch_size, size, args.seed,
                                                      args.caption_style)
        batches = make_batches(samples_by_size[size], preprocess, tokenizer, args.batch_size, args.device)
        label = unique_label(name, checkpoint, results)
        print(f"analysing {label} ...", flush=True)
        excluded = exclusions(args.exclude, model)
        result = analyse_hessian(model, batches, ContrastiveLoss(), args.params, settings, excluded)
        for warning in result["warnings"]:
            print(f"WARNING ({label}): {warning}", flush=True)
        results[label] = {"model": name, "checkpoint": checkpoint, "image_size": size, "excluded": excluded, **result}
    print(format_table(results))
    (out_dir / "results.json").write_text(json.dumps({"models": results, "torch_threads": args.threads}, indent=1))
    paths = plot_results(results, out_dir)
    print(f"wrote {out_dir / 'results.json'} and {', '.join(str(p) for p in paths)}")
    return 0
