"""Freezing towers layer by layer (LiT-style locking, or fine-tuning only the top of a large
pretrained tower). A tower's parameters are split into ordered groups: the input stem, one group
per block, and the output head (final norm + projection)."""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from .vmamba import HEAD_PREFIXES as VMAMBA_HEAD_PREFIXES

Groups = List[List[str]]  # each group: parameter-name prefixes


def _blocks(container: nn.Module, prefix: str) -> Groups:
    return [[f"{prefix}.{i}."] for i in range(len(container))]


def _vmamba_groups(tower: nn.Module) -> Groups:
    groups: Groups = [["patch_embed."]]
    for s, stage in enumerate(tower.layers):
        blocks = _blocks(stage.blocks, f"layers.{s}.blocks")
        blocks[-1].append(f"layers.{s}.downsample.")  # the downsample belongs to its stage's last block
        groups += blocks
    return groups + [list(VMAMBA_HEAD_PREFIXES)]


def _simba_groups(tower: nn.Module) -> Groups:
    groups: Groups = [["patch_embed1."]]
    stages = len(tower.cfg.depths)
    for s in range(1, stages + 1):
        blocks = _blocks(getattr(tower, f"block{s}"), f"block{s}")
        if s < stages:  # the stage norm and the next downsample belong to the stage's last block
            blocks[-1] += [f"norm{s}.", f"patch_embed{s + 1}."]
        groups += blocks
    return groups + [["post_network.", f"norm{stages}.", "head."]]


GROUPERS: Dict[str, Callable[[nn.Module], Groups]] = {
    "VMambaVisionTower": _vmamba_groups,
    "SiMBAVisionTower": _simba_groups,
    "Mamba1DVisionTower": lambda t: [["patch_embed.", "pos_embed"]] + _blocks(t.layers, "layers") + [["norm_f.", "head."]],
    "ViTVisionTower": lambda t: [["conv1.", "class_embedding", "positional_embedding", "ln_pre."]]
    + _blocks(t.transformer.resblocks, "transformer.resblocks") + [["ln_post.", "proj"]],
    "MambaTextTower": lambda t: [["backbone.embedding."]] + _blocks(t.backbone.layers, "backbone.layers")
    + [["backbone.norm_f.", "proj."]],
    "Mamba2TextTower": lambda t: [["backbone.embedding."]] + _blocks(t.backbone.layers, "backbone.layers")
    + [["backbone.norm_f.", "proj."]],
    "TransformerTextTower": lambda t: [["token_embedding.", "positional_embedding"]]
    + _blocks(t.transformer.resblocks, "transformer.resblocks") + [["ln_final.", "text_projection"]],
}


def layer_groups(tower: nn.Module) -> List[List[nn.Parameter]]:
    """The tower's parameters in groups from input to output; every parameter in exactly one."""
    grouper = GROUPERS.get(type(tower).__name__)
    if grouper is None:
        raise ValueError(f"no layer grouping known for {type(tower).__name__}")
    prefixes = grouper(tower)
    groups: List[List[nn.Parameter]] = [[] for _ in prefixes]
    for name, param in tower.named_parameters():
        owners = [i for i, group in enumerate(prefixes) if any(name.startswith(p) for p in group)]
        if len(owners) != 1:
            raise RuntimeError(f"parameter {name} of {type(tower).__name__} falls in {len(owners)} layer groups")
        groups[owners[0]].append(param)
    return groups


def lock_tower(tower: nn.Module, unlocked_groups: int = 0) -> None:
    """Freeze the tower except its last `unlocked_groups` groups (the head counts as one group,
    as in open_clip's lock_image_tower); 0 freezes all of it."""
    groups = layer_groups(tower)
    if not 0 <= unlocked_groups <= len(groups):
        raise ValueError(f"unlocked_groups must be in [0, {len(groups)}] for {type(tower).__name__}, got {unlocked_groups}")
    for index, group in enumerate(groups):
        trainable = index >= len(groups) - unlocked_groups
        for param in group:
            param.requires_grad_(trainable)
