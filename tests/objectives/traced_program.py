"""Reading a traced program: the equations of a function's jaxpr, nested bodies included."""

from collections.abc import Iterator

import jax
import jax.extend


def equations(fn, *args) -> Iterator:
    """Every equation of ``jax.make_jaxpr(fn)(*args)``, descending into shard_map, jit, scan
    and loop bodies."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from walk(sub)

    yield from walk(jax.make_jaxpr(fn)(*args).jaxpr)


def dot_shapes(fn, *args) -> list[tuple[int, ...]]:
    """Output shapes of every matrix product (``dot_general``) in the traced program."""
    return [
        tuple(eqn.outvars[0].aval.shape)
        for eqn in equations(fn, *args)
        if eqn.primitive.name == "dot_general"
    ]
