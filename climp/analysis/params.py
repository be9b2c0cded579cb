"""Choose which parameters the Hessian is taken with respect to.

A selection is a list of names: "all", a tower ("visual", "text"), a module path
("visual.layers.0") or any parameter-name prefix ("text.blocks.1.mixer.A_log").
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Sequence

import torch
from torch import nn


def matching(named: Dict[str, nn.Parameter], name: str) -> Dict[str, nn.Parameter]:
    """Parameters called `name` or inside the module `name`."""
    prefix = name.rstrip(".")
    return {n: p for n, p in named.items() if n == prefix or n.startswith(prefix + ".")}


TOKEN_EMBEDDINGS = ("text.backbone.embedding", "text.token_embedding")


def token_embeddings(model: nn.Module) -> List[str]:
    """The token embeddings of climp's text towers (Mamba: text.backbone.embedding,
    Transformer: text.token_embedding) that `model` has. Most of their rows belong to tokens
    absent from the analysed batches and only add exact zero eigenvalues."""
    named = dict(model.named_parameters())
    return [name for name in TOKEN_EMBEDDINGS if matching(named, name)]


def select_parameters(model: nn.Module, names: Sequence[str] = ("all",),
                      exclude: Sequence[str] = ()) -> Dict[str, nn.Parameter]:
    """Return {name: parameter} for the selection minus `exclude`, in the model's order.

    "all" means every parameter that requires grad; named selections may include frozen ones.
    `exclude` takes the same module paths / prefixes (e.g. a token embedding, whose unused rows
    only add exact zero eigenvalues). Raises ValueError when a name matches nothing, listing
    the model's top-level modules, or when nothing is left.
    """
    if not names:
        raise ValueError("parameter selection is empty; use 'all' or module / parameter names")
    named = dict(model.named_parameters())
    chosen: Dict[str, nn.Parameter] = {}
    for name in names:
        matches = {n: p for n, p in named.items() if p.requires_grad} if name == "all" else matching(named, name)
        if not matches:
            top = sorted({n.split(".")[0] for n in named})
            raise ValueError(f"parameter selection {name!r} matches no parameter; top-level names: {top}")
        chosen.update(matches)
    for name in exclude:
        dropped = matching(named, name)
        if not dropped:
            raise ValueError(f"parameter exclusion {name!r} matches no parameter")
        for n in dropped:
            chosen.pop(n, None)
    if not chosen:
        raise ValueError(f"parameter selection {list(names)} minus {list(exclude)} is empty")
    return {n: p for n, p in named.items() if n in chosen}


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one 1-D vector (a copy)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Split a 1-D vector into tensors shaped and typed like `like`."""
    sizes = [t.numel() for t in like]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector has {vector.numel()} entries, parameters have {sum(sizes)}")
    return [piece.view_as(t).to(t.dtype) for piece, t in zip(vector.split(sizes), like)]


@contextlib.contextmanager
def restored(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Restore the parameters' exact values on exit, whatever was done to them inside."""
    saved = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
