"""Checkpoint files in the seed systems' published layouts, written from small random weights,
and the systems' own feature computations written from their code's semantics (for tests)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Shapes = Dict[str, Tuple[int, ...]]


def official_vmamba_shapes(depths: Sequence[int], dim: int, gated: bool, d_state: int = 1) -> Shapes:
    """Every parameter of VMamba's VSSM (v2 stem, v3 downsample, no conv bias, classifier head
    removed) with its shape, named as VMamba's state dict names it."""
    dims = [dim * 2 ** i for i in range(len(depths))]
    shapes: Shapes = {
        "patch_embed.0.weight": (dims[0] // 2, 3, 3, 3), "patch_embed.0.bias": (dims[0] // 2,),
        "patch_embed.2.weight": (dims[0] // 2,), "patch_embed.2.bias": (dims[0] // 2,),
        "patch_embed.5.weight": (dims[0], dims[0] // 2, 3, 3), "patch_embed.5.bias": (dims[0],),
        "patch_embed.7.weight": (dims[0],), "patch_embed.7.bias": (dims[0],),
    }
    for i, (depth, d) in enumerate(zip(depths, dims)):
        inner, rank = 2 * d, math.ceil(d / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes.update({
                p + "norm.weight": (d,), p + "norm.bias": (d,),
                p + "op.in_proj.weight": (inner * (2 if gated else 1), d),
                p + "op.conv2d.weight": (inner, 1, 3, 3),
                p + "op.x_proj_weight": (4, rank + 2 * d_state, inner),
                p + "op.dt_projs_weight": (4, inner, rank), p + "op.dt_projs_bias": (4, inner),
                p + "op.A_logs": (4 * inner, d_state), p + "op.Ds": (4 * inner,),
                p + "op.out_norm.weight": (inner,), p + "op.out_norm.bias": (inner,),
                p + "op.out_proj.weight": (d, inner),
                p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,),
            })
        if i < len(depths) - 1:
            shapes.update({f"layers.{i}.downsample.1.weight": (dims[i + 1], d, 3, 3),
                           f"layers.{i}.downsample.1.bias": (dims[i + 1],),
                           f"layers.{i}.downsample.3.weight": (dims[i + 1],),
                           f"layers.{i}.downsample.3.bias": (dims[i + 1],)})
    shapes["classifier.norm.weight"] = (dims[-1],)
    shapes["classifier.norm.bias"] = (dims[-1],)
    return shapes


def clip_text_shapes(width: int, layers: int, embed_dim: int, vocab: int = 49408, context: int = 77) -> Shapes:
    """OpenAI-CLIP text encoder parameters as CLIP-Mamba's model holds them (module names
    without CLIP-Mamba's `_e` suffix)."""
    shapes: Shapes = {"token_embedding.weight": (vocab, width), "positional_embedding": (context, width),
                      "ln_final.weight": (width,), "ln_final.bias": (width,), "text_projection": (width, embed_dim)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        shapes.update({
            p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
            p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
            p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
            p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
            p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,),
            p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
        })
    return shapes


def random_tensor(name: str, shape: Tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random weights that keep a small network well conditioned (norm scales near 1)."""
    noise = torch.randn(shape, generator=gen)
    if len(shape) == 1 and name.endswith("weight"):  # every 1-D weight here is a LayerNorm scale
        return 1.0 + 0.1 * noise
    if name.endswith("A_logs"):
        return 0.5 * noise
    if name.endswith(("embedding.weight", "positional_embedding")):
        return 0.1 * noise
    fan_in = shape[-1] if len(shape) > 1 else 1
    return noise * (fan_in ** -0.5 if len(shape) > 1 else 0.1)


def clip_mamba_state(vision: Shapes, vision_width: int, text: Shapes, embed_dim: int,
                     seed: int = 0) -> Dict[str, torch.Tensor]:
    """A CLIP-Mamba model state dict (no `module.`): online and `_e` EMA twins, different values."""
    gen = torch.Generator().manual_seed(seed)
    state: Dict[str, torch.Tensor] = {}
    for suffix in ("", "_e"):
        for key, shape in vision.items():
            state[f"visual{suffix}.{key}"] = random_tensor(key, shape, gen)
        for key, shape in text.items():
            module, _, rest = key.partition(".")
            state[".".join(filter(None, [module + suffix, rest]))] = random_tensor(key, shape, gen)
        state[f"image_projection{suffix}"] = torch.randn(vision_width, embed_dim, generator=gen) * vision_width ** -0.5
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return state


def save_clip_mamba_checkpoint(state: Dict[str, torch.Tensor], path: Path, model: str) -> None:
    """torch.save a training checkpoint as CLIP-Mamba's main.py writes it (DDP-wrapped model)."""
    args = argparse.Namespace(model=model, lr=5e-4, betas=(0.9, 0.98), wd=0.5, epochs=25, batch_size=256,
                              output_dir="output/x", resume="", momentum_ema=0.996, disable_amp=False, gpu=0)
    torch.save({
        "epoch": 25,
        "state_dict": {"module." + k: v for k, v in state.items()},
        "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(2)}},
                      "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.98), "params": [0]}]},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 0},
        "best_acc": 38.3,
        "args": args,
    }, path)


def official_clip_text_ids(bpe, texts: List[str], context: int = 77) -> torch.Tensor:
    """OpenAI CLIP's tokenize as CLIP-Mamba calls it: sot + bpe + eot, `tokens[:77]`, zero padded."""
    out = torch.zeros(len(texts), context, dtype=torch.long)
    for i, text in enumerate(texts):
        tokens = ([bpe.sot_token_id] + bpe.encode(text) + [bpe.eot_token_id])[:context]
        out[i, : len(tokens)] = torch.tensor(tokens)
    return out


@torch.no_grad()
def official_clip_text_features(state: Dict[str, torch.Tensor], ids: torch.Tensor, suffix: str, heads: int,
                                layers: int) -> torch.Tensor:
    """CLIP-Mamba's encode_text: LND nn.MultiheadAttention blocks with a causal mask, QuickGELU,
    ln_final, the feature at argmax(id), times text_projection."""
    s = suffix
    width = state[f"positional_embedding{s}"].shape[1]
    x = F.embedding(ids, state[f"token_embedding{s}.weight"]) + state[f"positional_embedding{s}"]
    x = x.permute(1, 0, 2)
    length = ids.shape[1]
    mask = torch.full((length, length), float("-inf")).triu_(1)
    for i in range(layers):
        p = f"transformer{s}.resblocks.{i}."
        attn = nn.MultiheadAttention(width, heads)
        attn.load_state_dict({k: state[p + "attn." + k] for k in
                              ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
        h = F.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    x = F.layer_norm(x.permute(1, 0, 2), (width,), state[f"ln_final{s}.weight"], state[f"ln_final{s}.bias"])
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ state[f"text_projection{s}"]


def last_one(mask: torch.Tensor) -> torch.Tensor:
    """CLIMP's pooling position: the last index where the attention mask is 1."""
    length = mask.shape[1]
    return length - 1 - torch.argmax(torch.flip(mask, dims=[1]), dim=1)


def _ln_last(x: torch.Tensor, state: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), state[name + ".weight"], state[name + ".bias"])


def _official_ss2d(x: torch.Tensor, s: Dict[str, torch.Tensor], p: str, gated: bool) -> torch.Tensor:
    """VMamba's SS2D forward (forwardv2 + cross_selective_scan), channel-last in and out, with
    the selective scan as a sequential loop over positions."""
    x = x @ s[p + "in_proj.weight"].T
    if gated:
        x, z = x.chunk(2, dim=-1)
        z = F.silu(z)
    x = x.permute(0, 3, 1, 2)
    x = F.silu(F.conv2d(x, s[p + "conv2d.weight"], None, padding=1, groups=x.shape[1]))
    batch, dim, height, width = x.shape
    length = height * width
    xs = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    xs = torch.cat([xs, xs.flip(-1)], dim=1)  # (B, 4, D, L): rows, columns, and both reversed
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, s[p + "x_proj_weight"])
    rank, n = s[p + "dt_projs_weight"].shape[2], s[p + "A_logs"].shape[1]
    dts, Bs, Cs = torch.split(x_dbl, [rank, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, s[p + "dt_projs_weight"])
    A = -torch.exp(s[p + "A_logs"]).view(4, dim, n)
    Ds = s[p + "Ds"].view(4, dim)
    ys = torch.empty(batch, 4, dim, length)
    for k in range(4):
        delta = F.softplus(dts[:, k] + s[p + "dt_projs_bias"][k][:, None])  # (B, D, L)
        h = torch.zeros(batch, dim, n)
        for t in range(length):
            h = torch.exp(delta[:, :, t, None] * A[k]) * h + delta[:, :, t, None] * Bs[:, k, None, :, t] * xs[:, k, :, t, None]
            ys[:, k, :, t] = (h * Cs[:, k, None, :, t]).sum(-1) + Ds[k] * xs[:, k, :, t]
    ys = ys[:, 0:2] + ys[:, 2:4].flip(-1)
    y = ys[:, 0] + ys[:, 1].view(batch, dim, width, height).transpose(2, 3).reshape(batch, dim, length)
    y = _ln_last(y.transpose(1, 2), s, p + "out_norm").view(batch, height, width, dim)
    if gated:
        y = y * z
    return y @ s[p + "out_proj.weight"].T


@torch.no_grad()
def official_vmamba_features(state: Dict[str, torch.Tensor], prefix: str, images: torch.Tensor,
                             depths: Sequence[int], gated: bool) -> torch.Tensor:
    """VMamba's VSSM forward (v2 stem, VSS blocks, v3 downsample, classifier norm + average pool,
    head removed) from a state dict in VMamba's names, written from VMamba's code."""
    s = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    x = F.conv2d(images, s["patch_embed.0.weight"], s["patch_embed.0.bias"], stride=2, padding=1)
    x = F.gelu(_ln_last(x.permute(0, 2, 3, 1), s, "patch_embed.2").permute(0, 3, 1, 2))
    x = F.conv2d(x, s["patch_embed.5.weight"], s["patch_embed.5.bias"], stride=2, padding=1)
    x = _ln_last(x.permute(0, 2, 3, 1), s, "patch_embed.7")
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            x = x + _official_ss2d(_ln_last(x, s, p + "norm"), s, p + "op.", gated)
            h = F.gelu(F.linear(_ln_last(x, s, p + "norm2"), s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]))
            x = x + F.linear(h, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
        if i < len(depths) - 1:
            p = f"layers.{i}.downsample."
            x = F.conv2d(x.permute(0, 3, 1, 2), s[p + "1.weight"], s[p + "1.bias"], stride=2, padding=1)
            x = _ln_last(x.permute(0, 2, 3, 1), s, p + "3")
    return _ln_last(x, s, "classifier.norm").mean(dim=(1, 2))
