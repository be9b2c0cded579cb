"""Contrastive losses: open_clip's ClipLoss and SigLipLoss, chosen by name.

Gradient scaling under DDP (why no extra factor is needed). With `gather_with_grad=True`
every rank's loss is a function of all ranks' features, and the backward of
`torch.distributed.nn.all_gather` sums, into each rank's local features, the gradients that
all ranks' losses send them. With `local_loss=False` every rank computes the same global loss
L, so rank r's local features receive world_size * dL/df_r and its tower parameters
world_size * (rank r's share of dL/dθ); DDP's gradient average divides by world_size and
sums the shares, which is exactly dL/dθ. `logit_scale`/`logit_bias` get the full dL/ds on
every rank directly and the average leaves it unchanged. With `local_loss=True` rank r
computes L_r (its rows), L = mean_r L_r, and the same argument gives dL/dθ again. SigLIP's
neighbour exchange follows the `local_loss=True` pattern (loss_r / world_size summed).
"""
from __future__ import annotations

import math

from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

# SigLIP's recommended initialisation (Zhai et al. 2023): t' = log 10, b = -10.
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0
# The clamp applied to the logit scale after every optimiser step.
MAX_LOGIT_SCALE = math.log(100.0)


def create_loss(
    name: str,
    *,
    local_loss: bool = False,
    gather_with_grad: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> nn.Module:
    """The contrastive loss `name` ('clip' or 'siglip') for this rank of `world_size`.

    The returned module is called as `loss(image_features, text_features, logit_scale,
    logit_bias)` with normalised features and the exponentiated scale (the model's output
    dict), and returns a scalar.
    """
    if name == "clip":
        return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad,
                        cache_labels=True, rank=rank, world_size=world_size)
    if name == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    raise ValueError(f"unknown loss {name!r}; choose 'clip' or 'siglip'")


def logit_init_overrides(name: str) -> dict:
    """Model-factory overrides a loss needs: SigLIP wants a learnable bias and a small scale."""
    if name == "siglip":
        return {"init_logit_scale": SIGLIP_INIT_LOGIT_SCALE, "init_logit_bias": SIGLIP_INIT_LOGIT_BIAS}
    if name == "clip":
        return {}
    raise ValueError(f"unknown loss {name!r}; choose 'clip' or 'siglip'")
