"""Each objective agrees with an independent float64 NumPy implementation of its formula."""

import jax
import numpy as np
import pytest

from tests.objectives.cases import CASES, mesh_named


@pytest.mark.parametrize("mesh_name", [None, "2x4"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_agrees_with_numpy(case, mesh_name):
    arrays = case.inputs(seed=3) + tuple(case.fixed_inputs(seed=3))
    mesh = None if mesh_name is None else mesh_named(mesh_name)
    got = jax.jit(lambda a, s: case.call(a, s, mesh))(arrays, case.scalars)
    want = case.reference([np.asarray(x) for x in arrays], case.scalars)
    # float32 arithmetic against float64: 1e-5 relative, or 1e-5 absolute on these O(1) values.
    np.testing.assert_allclose(np.float64(got), np.float64(want), rtol=1e-5, atol=1e-5)
