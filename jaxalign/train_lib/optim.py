"""The optimizer: AdamW or LARS with linear warmup and cosine decay, a weight-decay mask, gradient
clipping by global norm, and parameter groups (learning-rate multipliers, frozen parameters),
optax throughout."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

# Parameters never decayed whatever their rank (CLIP / open_clip practice: gains, biases, the
# temperature and bias of the loss, position embeddings).
NO_DECAY_NAMES = frozenset({"pos_embedding", "logit_scale", "logit_bias", "cls", "probe"})
FROZEN = "frozen"


def _names(path: Any) -> list[str]:
    """The dict keys along a pytree path (boxes such as ``nn.Partitioned`` left out)."""
    return [str(key.key) for key in path if isinstance(key, jax.tree_util.DictKey)]


def param_path(path: Any) -> str:
    """A parameter's path as names joined by ``/`` (``backbone/conv_0/conv/kernel``)."""
    return "/".join(_names(path))


def decay_mask(params: Any) -> Any:
    """``True`` for the parameters weight decay applies to: matrices and higher-rank kernels
    (``ndim >= 2``), except position embeddings and the names in ``NO_DECAY_NAMES``; biases,
    LayerNorm scales and the loss's scale / bias are never decayed."""

    def decays(path, leaf) -> bool:
        return leaf.ndim >= 2 and not (set(_names(path)) & NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decays, params)


def group_labels(params: Any, groups: Sequence[Any]) -> Any:
    """Each parameter's group: ``"group_<i>"`` for the first ``groups[i]`` whose ``pattern``
    its path matches (``"frozen"`` when that group's ``lr_mult`` is 0), ``"default"`` when none
    does."""

    def label(path, _) -> str:
        name = param_path(path)
        for i, group in enumerate(groups):
            if re.search(group.pattern, name):
                return FROZEN if group.lr_mult == 0 else f"group_{i}"
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    optim: Any, total_steps: int, groups: Sequence[Any] = ()
) -> tuple[optax.GradientTransformation, Any]:
    """``(tx, schedule)`` from the config's ``optim`` group: clip by global norm
    ``optim.clip_norm`` (0 = off), then ``optim.name``: AdamW (``b1``, ``b2``, ``eps``,
    ``weight_decay`` on ``decay_mask``) or LARS (You et al. 2017, as SimCLR uses it: momentum
    ``b1``, trust coefficient 0.001, weight decay and the trust ratio on ``decay_mask`` only,
    so biases and norm parameters take plain momentum steps) at ``lr`` with ``warmup_steps``
    of linear warmup from 0 and cosine decay to ``lr * min_lr_ratio`` at ``total_steps``.

    ``groups`` (``jaxalign.tasks.ParamGroup``: a path pattern and an ``lr_mult``) scale the
    rate of the parameters they match (``optax.multi_transform``, one optimizer per group);
    frozen ones (``lr_mult=0``) get ``optax.set_to_zero``: no update, no decay, no moments,
    and their gradients are left out of the clipping norm. Without groups the optimizer is
    the plain chain above.
    """
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.lr * optim.min_lr_ratio,
    )

    def optimizer(scale: float) -> optax.GradientTransformation:
        rate = schedule if scale == 1 else (lambda count: schedule(count) * scale)
        if optim.name == "lars":
            return optax.lars(
                rate,
                weight_decay=optim.weight_decay,
                weight_decay_mask=decay_mask,
                trust_ratio_mask=decay_mask,
                momentum=optim.b1,
            )
        return optax.adamw(
            rate,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=decay_mask,
        )

    clip = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
    if not groups:
        return (optax.chain(*clip, optimizer(1.0)) if clip else optimizer(1.0)), schedule
    transforms = {"default": optimizer(1.0), FROZEN: optax.set_to_zero()}
    transforms.update(
        {f"group_{i}": optimizer(g.lr_mult) for i, g in enumerate(groups) if g.lr_mult}
    )

    def labels(params: Any) -> Any:
        return group_labels(params, groups)

    def frozen(params: Any) -> Any:
        return jax.tree.map(lambda label: label == FROZEN, labels(params))

    tx = optax.chain(
        optax.masked(optax.set_to_zero(), frozen),  # out of the clipping norm
        *clip,
        optax.multi_transform(transforms, labels),
    )
    return tx, schedule
