"""The trainer's own CLIP step, read as a program on CPU for what a GPU run needs.

- Lowered for CUDA in bfloat16 mode: every attention goes through cuDNN's fused kernel (forward
  and backward), and no matmul of the towers (an operand of rank 3 or more: ``[batch, length,
  ...]`` activations, ``[width, heads, head_dim]`` kernels) takes a float32 operand. The
  rank-2 matmuls left in float32 are the embedding projections and the loss, by design.
- Compiled under FSDP over 8 devices: each weight matrix is all-gathered once per step (the
  forward's gather serves the backward too; nothing is gathered again).
"""

from __future__ import annotations

import os
import re
from collections import Counter

import jax
import pytest

from jaxalign import config as config_lib
from jaxalign import train
from jaxalign.models import layers

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "clip.py")
# Sizes none of whose weight shapes is also an activation's (batch 24, lengths 16 and 17).
SIZES = {
    "train.global_batch_size": 24,
    "objective.tile": 24,
    "model.image.width": 48,  # 2 heads of 24: cuDNN takes multiples of 8
    "model.image.mlp_dim": 80,
    "model.text.width": 64,
    "model.text.mlp_dim": 96,
}


def _setup(mesh: str, **extra):
    overrides = [f"--config.{k}={v}" for k, v in {**SIZES, **extra}.items()]
    config = config_lib.load(f"{CONFIG}:tiny,{mesh}", overrides)
    return train.setup_run(config, jax.devices(), prepare_data=False)


def _operand_types(line: str) -> list[str]:
    """The operand tensor types of one StableHLO ``dot_general`` line."""
    signature = re.search(r":\s*\((.*?)\)\s*->", line)
    assert signature, line
    return re.findall(r"tensor<([^>]*)>", signature.group(1))


def test_bfloat16_towers_run_bfloat16_matmuls_and_fused_attention(lower_for_cuda, monkeypatch):
    """Every attention call of the step asks for cuDNN (whose checks of shapes, dtype and mask
    form run while tracing; ``tests/models/test_attention.py`` shows the kernel's calls in
    the lowered program). Under a mesh jax wraps the kernel in ``custom_partitioning``, so the
    step's program holds one ``CustomSPMDPartitioning`` call per attention and direction."""
    monkeypatch.setattr(layers, "fused_attention_device", lambda: True)  # as on an H100
    asked = []
    attention = jax.nn.dot_product_attention

    def recorded(*args, implementation=None, **kwargs):
        asked.append(implementation)
        return attention(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(layers.jax.nn, "dot_product_attention", recorded)
    setup = _setup("data", **{"model.dtype": "bfloat16"})
    asked.clear()  # the init's trace
    text = setup.lower_step(platforms=("cuda",)).as_text()
    assert asked == ["cudnn", "cudnn"], asked  # one attention per tower (depth 1)
    assert text.count("custom_call @CustomSPMDPartitioning") == 4  # forward and backward
    dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
    towers = [d for d in dots if any(t.count("x") >= 3 for t in _operand_types(d))]
    assert len(towers) >= 12  # q, k, v, out, fc1, fc2 per tower, and their gradients
    upcast = [d.strip()[:160] for d in towers if any("f32" in t for t in _operand_types(d))]
    assert not upcast, upcast


def _gathered_shapes(hlo: str) -> Counter:
    """Result shapes of the compiled program's all-gathers, as tuples."""
    shapes = re.findall(r"= \w+\[([\d,]*)\][^=]*? all-gather(?:-start)?\(", hlo)
    return Counter(tuple(int(d) for d in s.split(",") if d) for s in shapes)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fsdp_gathers_each_weight_matrix_once_per_step(dtype):
    """Every matmul kernel sharded over ``fsdp`` is all-gathered exactly once (the forward's
    copy serves the backward); the token table is read by a sharded lookup, not gathered. The
    1-D vectors (norm scales, biases: 0.1% of ViT-B/16's parameters) are not checked: XLA
    gathers a norm's scale again in the backward, where its gradient needs it."""
    setup = _setup("fsdp", **{"model.dtype": dtype})
    assert setup.mesh.shape["fsdp"] == 8
    gathered = _gathered_shapes(setup.lower_step().compile().as_text())
    kernels, tables = Counter(), Counter()
    for path, leaf in jax.tree_util.tree_flatten_with_path(setup.abstract_state.params)[0]:
        if leaf.ndim >= 2 and "fsdp" in jax.tree.leaves(tuple(leaf.sharding.spec)):
            name = jax.tree_util.keystr(path)
            (tables if "embedding" in name else kernels)[tuple(leaf.shape)] += 1
    assert sum(kernels.values()) == 2 * 6 + 2  # per tower q, k, v, out, fc1, fc2; projections
    for shape, count in kernels.items():
        assert gathered[shape] == count, (shape, gathered[shape], count)
    for shape, count in tables.items():  # position tables and the patch embedding: once
        assert gathered[shape] <= count, (shape, gathered[shape], count)
