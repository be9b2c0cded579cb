"""What the benchmark scripts share: a synthetic image-text batch, one contrastive training step,
step timing and the JSON record. Scripts run from a checkout without installing (the repository
root is put on sys.path) and import climp before torch, so climp's OpenMP wait policy applies."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import climp  # noqa: E402,F401 - before torch (OMP_WAIT_POLICY)
import torch  # noqa: E402

SOT, EOT = 49406, 49407  # open_clip's BPE start and end tokens


def random_batch(batch: int, side: int, text_length: int = 16, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images (batch, 3, side, side), token ids (batch, text_length) framed by start/end tokens)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, side, side, generator=g)
    texts = torch.randint(1, SOT, (batch, text_length), generator=g)
    texts[:, 0], texts[:, -1] = SOT, EOT
    return images, texts


def contrastive_step(model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor,
                     forward: Optional[Callable] = None,
                     optimizer: Optional[torch.optim.Optimizer] = None) -> Callable[[], None]:
    """One training step on a fixed batch: forward (`forward`, default the model), open_clip's
    CLIP loss, backward, then the optimizer's update if one is given."""
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    forward = model if forward is None else forward  # a compiled module has no truth value

    def step() -> None:
        out = forward(images, texts)
        loss_fn(out["image_features"], out["text_features"], out["logit_scale"]).backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    return step


def add_clock_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads (PyTorch's intra-op threads) and --cpu-time (one thread's CPU time instead of wall
    time, which other processes on a busy machine barely change)."""
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cpu-time", action="store_true", help="time.process_time on one thread")


def set_up_clock(args: argparse.Namespace) -> Callable[[], float]:
    """Apply --threads / --cpu-time (which sets args.threads to 1); the clock to time with."""
    if args.cpu_time:
        args.threads = 1
    torch.set_num_threads(args.threads)
    return time.process_time if args.cpu_time else time.perf_counter


def interleaved(steps: Dict[str, Callable[[], None]], rounds: int,
                clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Seconds of each step in each of `rounds` interleaved rounds, after one warm-up call each."""
    for step in steps.values():
        step()
    times: Dict[str, List[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            start = clock()
            step()
            times[key].append(clock() - start)
    return times


def timed(step: Callable[[], None], steps: int = 1) -> List[float]:
    """Seconds of each of `steps` calls."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def write_json(path: Optional[str], args: Any, results: Dict[str, Any]) -> None:
    """The run's arguments and results as JSON at `path` (nothing when path is None)."""
    if path:
        with open(path, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
