"""Text towers: token ids (B, L), right padded with pad_id, -> text features (B, embed_dim).

`MambaTextTower` reads captions of any length (the Mamba backbone is causal, so padding after a
caption never changes its feature). `TransformerTextTower` is open_clip's TextTransformer with
its parameter names, so open_clip CLIP checkpoints load via `load_open_clip_text_state_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer, text_global_pool
from torch import nn

from .freeze import Groups, LockableTower, block_groups
from .mamba import MambaBackbone, MambaConfig, at_positions
from .mamba2 import Mamba2Backbone, Mamba2Config
from .validation import check_token_ids
from .weights import load_state_dict_strict
from ..config_mixin import FromDict


def check_text_input(token_ids: torch.Tensor, pad_id: int, vocab_size: int, context_length: Optional[int] = None) -> None:
    """Raise ValueError for input a text tower cannot encode: not a non-empty integer (B, L)
    tensor, ids outside [0, vocab_size), longer than context_length, or a row of padding only.
    The value checks are skipped where values are not at hand: on the meta device and while
    torch.compile traces (reading a value would split the compiled graph)."""
    check_token_ids(token_ids)
    if context_length is not None and token_ids.shape[1] > context_length:
        raise ValueError(
            f"token ids have length {token_ids.shape[1]} but this text tower's context_length is "
            f"{context_length}; truncate captions to {context_length} tokens"
        )
    if token_ids.device.type == "meta" or torch.compiler.is_compiling():
        return
    low, high = int(token_ids.min()), int(token_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got values in [{low}, {high}]")
    empty = ~(token_ids != pad_id).any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"token id rows {rows} contain only padding (pad_id={pad_id}); every caption needs a token")


# ----------------------------------------------------------------------------- Mamba


def check_pooling(cfg) -> None:
    """Validate the pooling settings shared by the Mamba and Mamba-2 text configs."""
    name = type(cfg).__name__
    if cfg.pooling not in ("last", "mean"):
        raise ValueError(f"{name}.pooling must be 'last' or 'mean', got {cfg.pooling!r}")
    if not 0 <= cfg.pad_id < cfg.vocab_size:
        raise ValueError(f"{name}.pad_id {cfg.pad_id} is outside the vocabulary [0, {cfg.vocab_size})")


@dataclass
class MambaTextConfig(MambaConfig):
    """A Mamba backbone config plus how the tower reads padded captions.

    pooling "last": the hidden state of the last non-padding token (the EOT token, or the caption's
    last token when the tokenizer appends none; as the backbone is causal it has seen the whole
    caption); "mean": the mean over non-padding tokens. proj_bias: a bias in the projection to
    the joint space (CLIMP's released models have one).
    """

    pad_id: int = 0
    pooling: str = "last"
    proj_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pooling(self)


@dataclass
class Mamba2TextConfig(Mamba2Config):
    """A Mamba-2 backbone config plus the pooling and projection settings of MambaTextConfig."""

    pad_id: int = 0
    pooling: str = "last"
    proj_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pooling(self)


class MambaTextTower(LockableTower, nn.Module):
    """Mamba backbone, pooling at the last non-padding token, Linear projection to embed_dim."""

    context_length: Optional[int] = None  # no limit: any caption length is read
    backbone_class = MambaBackbone

    def __init__(self, cfg: MambaTextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.output_dim = embed_dim
        self.backbone = self.backbone_class(cfg)
        self.proj = nn.Linear(cfg.d_model, embed_dim, bias=cfg.proj_bias)
        nn.init.normal_(self.proj.weight, std=cfg.d_model ** -0.5)

    def layer_group_prefixes(self) -> Groups:
        """The token embedding, one group per block, the final norm and projection."""
        return ([["backbone.embedding."]] + block_groups(self.backbone.layers, "backbone.layers")
                + [["backbone.norm_f.", "proj."]])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def last_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B,) index of each right-padded row's last caption token. The caption ends at the last
        non-pad token, so a pad-id token inside a caption (BPE id 0 is "!") stays in it."""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device).expand_as(token_ids)
        return torch.where(token_ids != self.cfg.pad_id, positions, -1).amax(dim=1)

    def pool(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) hidden states of every token -> (B, d_model) over each row's caption."""
        last = self.last_positions(token_ids)
        if self.cfg.pooling == "mean":
            steps = torch.arange(token_ids.shape[1], device=token_ids.device)
            weights = (steps <= last[:, None]).to(hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(1) / weights.sum(1)
        return at_positions(hidden, last)

    def trim(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids without the columns after the batch's longest caption: the backbone is causal,
        so those columns change no pooled feature and need not be computed. Kept whole where
        values are not at hand (meta device, torch.compile tracing)."""
        if token_ids.device.type == "meta" or torch.compiler.is_compiling():
            return token_ids
        used = (token_ids != self.cfg.pad_id).any(dim=0).nonzero()
        return token_ids[:, :int(used.max()) + 1]

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """With pooling "last" the backbone computes the hidden state at the pooled token only
        (its last layer's work after the scan, and the final norm, on B rows instead of B * L);
        the same feature as `pool(backbone(ids), ids)`."""
        check_text_input(token_ids, self.cfg.pad_id, self.cfg.vocab_size)
        token_ids = self.trim(token_ids.long())
        if self.cfg.pooling == "last":
            return self.proj(self.backbone(token_ids, positions=self.last_positions(token_ids)))
        return self.proj(self.pool(self.backbone(token_ids), token_ids))


class Mamba2TextTower(MambaTextTower):
    """The same tower over a Mamba-2 (SSD) backbone, as CLIMP's Mamba-2 1.3B text encoder."""

    backbone_class = Mamba2Backbone


# ----------------------------------------------------------------------------- Transformer


@dataclass
class TransformerTextConfig(FromDict):
    """open_clip's causal text transformer (CLIPTextCfg's fields that this tower supports).

    pool_type "argmax" takes the token with the largest id (open_clip BPE's EOT, 49407);
    "eos" takes the first occurrence of eos_id (for tokenizers whose EOT is not the largest id).
    quick_gelu selects OpenAI CLIP's activation (needed to load OpenAI-trained weights).
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None
    pad_id: int = 0
    eos_id: int = 49407
    pool_type: str = "argmax"
    proj_bias: bool = False
    quick_gelu: bool = False

    def __post_init__(self) -> None:
        self.require_positive_ints("context_length", "vocab_size", "width", "heads", "layers")
        if self.width % self.heads:
            raise ValueError(f"TransformerTextConfig.width {self.width} is not divisible by heads {self.heads}")
        if self.pool_type not in ("argmax", "eos"):
            raise ValueError(f"TransformerTextConfig.pool_type must be 'argmax' or 'eos', got {self.pool_type!r}")


class TransformerTextTower(LockableTower, TextTransformer):
    """open_clip's TextTransformer (same parameter names: token_embedding, positional_embedding,
    transformer, ln_final, text_projection) reading right-padded ids of any length up to
    context_length; the causal mask and positional embedding are cut to the input length."""

    def __init__(self, cfg: TransformerTextConfig, embed_dim: int):
        super().__init__(
            context_length=cfg.context_length,
            vocab_size=cfg.vocab_size,
            width=cfg.width,
            heads=cfg.heads,
            layers=cfg.layers,
            mlp_ratio=cfg.mlp_ratio,
            ls_init_value=cfg.ls_init_value,
            output_dim=embed_dim,
            pad_id=cfg.pad_id,
            eos_id=cfg.eos_id,
            pool_type=cfg.pool_type,
            proj_bias=cfg.proj_bias,
            act_layer=QuickGELU if cfg.quick_gelu else nn.GELU,
            norm_layer=LayerNorm,
        )
        self.cfg = cfg

    def layer_group_prefixes(self) -> Groups:
        """The embeddings, one group per block, the final norm and projection."""
        return ([["token_embedding.", "positional_embedding"]]
                + block_groups(self.transformer.resblocks, "transformer.resblocks")
                + [["ln_final.", "text_projection"]])

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        check_text_input(token_ids, self.pad_id, self.vocab_size, self.context_length)
        token_ids = token_ids.long()
        length = token_ids.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(token_ids).to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        pooled = text_global_pool(x, token_ids, pool_type=self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection


OPEN_CLIP_TEXT_MODULES = {"token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"}


def open_clip_text_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The text-tower entries of an open_clip state dict, named as in TransformerTextTower.

    Accepts open_clip `CLIP` (text weights at the top level: token_embedding, positional_embedding,
    transformer.*, ln_final.*, text_projection) and `CustomTextCLIP` (the same under `text.`).
    """
    if any(k.startswith("text.") for k in state_dict):
        return {k[len("text."):]: v for k, v in state_dict.items() if k.startswith("text.")}
    selected = {k: v for k, v in state_dict.items() if k.split(".")[0] in OPEN_CLIP_TEXT_MODULES}
    if not selected:
        raise ValueError("no open_clip text-tower keys (token_embedding, transformer.*, ln_final, "
                         "text_projection, or text.*) in the state dict")
    return selected


def load_open_clip_text_state_dict(tower: TransformerTextTower, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load the text tower of an open_clip CLIP / CustomTextCLIP state dict into `tower` (strict;
    ValueError lists missing, unexpected and mis-shaped keys)."""
    load_state_dict_strict(tower, open_clip_text_state_dict(state_dict), source="open_clip text tower")
