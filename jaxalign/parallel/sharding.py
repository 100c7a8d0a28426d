"""Logical axis names -> mesh axes: the one list of rules, and sharded initialisation.

Model code names the axes of every parameter and main activation (``nn.with_logical_partitioning``,
``nn.with_logical_constraint``); this file maps those names onto the mesh axes ``data``, ``fsdp``
and ``tensor`` (the flax ``lm1b`` / MaxText pattern). Each logical name appears once.

Parameters: ``embed`` is split over ``fsdp`` (ZeRO-3 style: each device keeps a slice of every
weight and the step all-gathers it), the wide axes (``mlp``, ``heads``, ``vocab``) over
``tensor``. Activations carry ``act_*`` names: their batch is split over ``data`` and ``fsdp``,
their features over ``tensor`` only where a layer's weights are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("positions", None),
    ("channels", None),
    ("conv_out", "tensor"),
    ("classes", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv", None),
)


def _mesh_axes(rule: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if rule is None:
        return ()
    return (rule,) if isinstance(rule, str) else tuple(rule)


def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = LOGICAL_RULES,
) -> PartitionSpec:
    """The ``PartitionSpec`` for one array with logical axis ``names`` and ``shape``.

    A mesh axis is used once per array (the first logical axis that asks for it gets it), and a
    dimension the mesh axes do not divide stays whole (e.g. a 10-class head on 8 devices), so
    every preset shards on every mesh. Unknown logical names raise, naming the name.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_RULES ({sorted(table)})")
        axes = tuple(a for a in _mesh_axes(table[name]) if a not in used and mesh.shape[a] > 1)
        count = 1
        for axis in axes:
            count *= mesh.shape[axis]
        if not axes or size % count:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def variable_shardings(abstract_variables: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """``NamedSharding``s for a tree of (abstract) variables boxed as ``nn.LogicallyPartitioned``.

    Unboxed leaves (no logical names) are replicated; a box holding no array (the empty
    optimizer state of a frozen parameter) stays as that empty subtree.
    """

    def one(leaf):
        if isinstance(leaf, nn.Partitioned) and not hasattr(leaf.value, "shape"):
            return leaf.value  # a box around no array (optax's MaskedNode of a frozen group)
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec = logical_to_spec(leaf.names, leaf.value.shape, mesh, rules)
        else:
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _unbox(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def abstract_init(
    init_fn: Callable[..., Any], mesh: Mesh, *args: Any, rules=LOGICAL_RULES
) -> tuple[Any, Any]:
    """``(abstract, shardings)`` of ``init_fn(*args)`` without running it: unboxed
    ``jax.ShapeDtypeStruct``s that carry their ``NamedSharding`` (what a checkpoint restores
    into), and the shardings alone."""
    boxed = jax.eval_shape(init_fn, *args)
    shardings = variable_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), _unbox(boxed), shardings
    )
    return abstract, shardings


def sharded_init(
    init_fn: Callable[..., Any],
    mesh: Mesh,
    *args: Any,
    rules=LOGICAL_RULES,
    shardings: Any = None,
) -> tuple[Any, Any]:
    """Runs ``init_fn(*args)`` (e.g. ``model.init``) so that every parameter is created already
    sharded: shapes come from ``jax.eval_shape``, then the init is jitted with out shardings, so
    nothing full-size is ever built on one device. ``shardings`` (from ``abstract_init``) saves
    tracing ``init_fn`` a second time.

    Returns ``(variables, shardings)``, both unboxed (plain arrays / ``NamedSharding``s).
    """
    if shardings is None:
        _, shardings = abstract_init(init_fn, mesh, *args, rules=rules)
    with jax.set_mesh(mesh):
        variables = sharded_initializer(init_fn, shardings)(*args)
    return variables, shardings


def sharded_initializer(init_fn: Callable[..., Any], shardings: Any) -> Callable[..., Any]:
    """``init_fn`` unboxed and jitted with ``shardings`` as out shardings (``sharded_init``'s
    program), to call under ``jax.set_mesh(mesh)``; one compile serves every call of equal
    argument shapes (e.g. several seeds' keys)."""

    def init_unboxed(*args):
        # Plain values; the layout comes from out_shardings (flax's own unbox would add
        # sharding constraints without the divisibility fallback of logical_to_spec).
        return _unbox(init_fn(*args))

    return jax.jit(init_unboxed, out_shardings=shardings)


def activation_context(mesh: Mesh, rules=LOGICAL_RULES):
    """The context under which the models' activation constraints apply: enter it around a
    traced step (``with activation_context(mesh): jitted(...)``)."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
    return stack
