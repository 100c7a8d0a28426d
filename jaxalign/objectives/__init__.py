"""Objectives: pure functions of global (possibly batch-sharded) arrays returning global scalars.

See the contracts in docs/architecture.md. Every function takes ``mesh=None`` for one device or
the mesh its inputs are sharded over; the value and gradients do not depend on which.
"""

from jaxalign.objectives.cached_gradient import cached_gradient
from jaxalign.objectives.contrastive import MAX_LOGIT_SCALE, clip_loss, nt_xent, siglip_loss
from jaxalign.objectives.domain import (
    DEFAULT_KERNEL_MULTS,
    coral,
    dann_schedule,
    domain_adversarial_loss,
    gradient_reversal,
    mmd,
    reversal_coefficient,
    warm_start_schedule,
)
from jaxalign.objectives.reconstruction import (
    masked_mean_squared_error,
    masked_token_cross_entropy,
)

__all__ = [
    "DEFAULT_KERNEL_MULTS",
    "MAX_LOGIT_SCALE",
    "cached_gradient",
    "clip_loss",
    "coral",
    "dann_schedule",
    "domain_adversarial_loss",
    "gradient_reversal",
    "masked_mean_squared_error",
    "masked_token_cross_entropy",
    "mmd",
    "nt_xent",
    "reversal_coefficient",
    "siglip_loss",
    "warm_start_schedule",
]
