"""Exponential moving average of model weights (evaluation uses it when enabled)."""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn


class ModelEma:
    """A frozen copy of a model whose floating-point state tracks the live model.

    The effective decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so short
    runs are not dominated by the random initialisation (timm's and VMamba's EMA warm-up).
    Integer buffers are copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every floating-point tensor of the EMA copy toward `model`'s."""
        decay = self.current_decay()
        live = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = live[name]
            if ema_value.is_floating_point():
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - decay)
            else:
                ema_value.copy_(value)
        self.updates += 1

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()
