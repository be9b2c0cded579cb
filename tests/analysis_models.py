"""Small float64 networks whose exact Hessian is cheap, shared by the analysis tests (no tests here)."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import climp
import climp.ops


class TanhMLP(nn.Module):
    """3 -> 6 -> 2 with tanh: 38 parameters, an indefinite Hessian at random weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def mse_loss(model: nn.Module, batch: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def regression_batches(num_batches: int = 3, batch_size: int = 8, seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, generator=g, dtype=torch.float64),
             torch.randn(batch_size, 2, generator=g, dtype=torch.float64)) for _ in range(num_batches)]


class MeanPoolText(nn.Module):
    """Embedding, mean over non-pad tokens, linear head."""

    def __init__(self, vocab: int = 12, width: int = 3, embed_dim: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp_min(1)
        return self.proj(torch.tanh(pooled))


class AttentionText(nn.Module):
    """One self-attention layer (nn.MultiheadAttention, i.e. scaled_dot_product_attention)."""

    def __init__(self, vocab: int = 12, width: int = 4, embed_dim: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.attn = nn.MultiheadAttention(width, num_heads=2, batch_first=True, dropout=0.1)
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.proj(x.mean(1))


class ScanText(nn.Module):
    """A minimal Mamba-style mixer: projections feeding climp.ops.selective_scan."""

    def __init__(self, vocab: int = 12, width: int = 3, state: int = 2, embed_dim: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.in_proj = nn.Linear(width, 2 * width + 2 * state)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(width, 1))
        self.D = nn.Parameter(torch.ones(width))
        self.proj = nn.Linear(width, embed_dim)
        self.width, self.state = width, state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(self.embed(ids)).transpose(1, 2)  # (B, 2w+2s, L)
        u, delta, B, C = x.split([self.width, self.width, self.state, self.state], dim=1)
        y = climp.ops.selective_scan(u, delta, -torch.exp(self.A_log), B, C, self.D, delta_softplus=True)
        return self.proj(y.mean(-1))


class TinyImage(nn.Module):
    def __init__(self, pixels: int = 12, hidden: int = 4, embed_dim: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.Tanh(), nn.Dropout(0.2),
                                 nn.Linear(hidden, embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class TinyClip(nn.Module):
    """Two towers and a temperature with climp's forward contract (normalised features,
    exp'd logit scale, optional logit bias)."""

    def __init__(self, text: nn.Module, logit_bias: bool = False) -> None:
        super().__init__()
        self.visual = TinyImage()
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0)) if logit_bias else None

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {
            "image_features": F.normalize(self.visual(images), dim=-1),
            "text_features": F.normalize(self.text(ids), dim=-1),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }


def clip_batches(num_batches: int = 2, batch_size: int = 5, length: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, 2, 2, generator=g, dtype=torch.float64),
             torch.randint(1, 12, (batch_size, length), generator=g)) for _ in range(num_batches)]


def exact_hessian(model: nn.Module, loss_fn: Callable, batches: Sequence, names: Sequence[str]) -> torch.Tensor:
    """Dense Hessian of the batch-mean loss w.r.t. the named parameters (eval mode), built by
    torch.autograd.functional.hessian on a flat vector."""
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    model.eval()

    def objective(flat: torch.Tensor) -> torch.Tensor:
        pieces = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        total = 0
        for batch in batches:
            total = total + loss_fn(_Bound(model, pieces), batch)
        return total / len(batches)

    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(objective, flat0, vectorize=True)


class _Bound(nn.Module):
    """Calls `model` with some parameters replaced (torch.func.functional_call)."""

    def __init__(self, model: nn.Module, replaced: Dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model, self.replaced = model, replaced

    def forward(self, *args):
        return functional_call(self.model, self.replaced, args)


def shrunk_climp_tiny(seed: int = 0):
    """climp-tiny (VMamba image tower, Mamba text tower) shrunk to ~1e5 parameters, float32, with
    one batch of 4 random 32x32 images and padded captions over a 64-token vocabulary."""
    torch.manual_seed(seed)
    model = climp.create_model("climp-tiny", vision_cfg={"depths": [1, 1, 1, 1], "dims": 8, "image_size": 32},
                               text_cfg={"d_model": 16, "n_layer": 1, "vocab_size": 64})
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (4, 6), generator=g)
    ids[0, 4:] = 0
    ids[1, 5:] = 0
    return model, [(torch.randn(4, 3, 32, 32, generator=g), ids)]
