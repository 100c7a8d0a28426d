"""The optimizer: AdamW with linear warmup and cosine decay, a weight-decay mask, and gradient
clipping by global norm (optax throughout)."""

from __future__ import annotations

from typing import Any

import jax
import optax

# Parameters never decayed whatever their rank (CLIP / open_clip practice: gains, biases, the
# temperature and bias of the loss, position embeddings).
NO_DECAY_NAMES = frozenset({"pos_embedding", "logit_scale", "logit_bias", "cls", "probe"})


def decay_mask(params: Any) -> Any:
    """``True`` for the parameters weight decay applies to: matrices and higher-rank kernels
    (``ndim >= 2``), except position embeddings and the names in ``NO_DECAY_NAMES``; biases,
    LayerNorm scales and the loss's scale / bias are never decayed."""

    def decays(path, leaf) -> bool:
        names = {getattr(key, "key", getattr(key, "name", None)) for key in path}
        return leaf.ndim >= 2 and not (names & NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim: Any, total_steps: int) -> tuple[optax.GradientTransformation, Any]:
    """``(tx, schedule)`` from the config's ``optim`` block: clip by global norm
    ``optim.clip_norm`` (0 = off), then AdamW (``b1``, ``b2``, ``eps``, ``weight_decay`` on
    ``decay_mask``) at ``lr`` with ``warmup_steps`` of linear warmup from 0 and cosine decay to
    ``lr * min_lr_ratio`` at ``total_steps``."""
    warmup = min(int(optim.warmup_steps), max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(optim.lr),
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=float(optim.lr) * float(optim.min_lr_ratio),
    )
    adamw = optax.adamw(
        schedule,
        b1=float(optim.b1),
        b2=float(optim.b2),
        eps=float(optim.eps),
        weight_decay=float(optim.weight_decay),
        mask=decay_mask,
    )
    if float(optim.clip_norm) > 0:
        return optax.chain(optax.clip_by_global_norm(float(optim.clip_norm)), adamw), schedule
    return adamw, schedule
