"""Freezing towers layer by layer (LiT-style locking, or fine-tuning only the top of a large
pretrained tower), as open_clip's tower `lock()`. Each tower names its parameters' ordered groups
(the input stem, one group per block, the output head) in `layer_group_prefixes()`; the
`LockableTower` mixin turns them into parameter groups and freezes all but the last few."""
from __future__ import annotations

from typing import List

from torch import nn

Groups = List[List[str]]  # each group: parameter-name prefixes


def block_groups(container: nn.Module, prefix: str) -> Groups:
    """One group per block of `container`, whose parameters live under `prefix`."""
    return [[f"{prefix}.{i}."] for i in range(len(container))]


class LockableTower:
    """Mixin for towers (nn.Modules): `layer_groups()` and `lock()` from `layer_group_prefixes()`."""

    def layer_group_prefixes(self) -> Groups:
        """Parameter-name prefixes of each layer group, from input to output."""
        raise NotImplementedError(f"{type(self).__name__} does not define its layer groups")

    def layer_groups(self) -> List[List[nn.Parameter]]:
        """The tower's parameters in groups from input to output; every parameter in exactly one."""
        prefixes = self.layer_group_prefixes()
        groups: List[List[nn.Parameter]] = [[] for _ in prefixes]
        for name, param in self.named_parameters():
            owners = [i for i, group in enumerate(prefixes) if any(name.startswith(p) for p in group)]
            if len(owners) != 1:
                raise RuntimeError(f"parameter {name} of {type(self).__name__} falls in {len(owners)} layer groups")
            groups[owners[0]].append(param)
        return groups

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze the tower except its last `unlocked_groups` groups (the head counts as one group,
        as in open_clip's lock_image_tower); 0 freezes all of it."""
        groups = self.layer_groups()
        if not 0 <= unlocked_groups <= len(groups):
            raise ValueError(f"unlocked_groups must be in [0, {len(groups)}] for {type(self).__name__}, "
                             f"got {unlocked_groups}")
        for index, group in enumerate(groups):
            trainable = index >= len(groups) - unlocked_groups
            for param in group:
                param.requires_grad_(trainable)

