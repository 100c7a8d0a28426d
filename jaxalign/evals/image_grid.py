"""Image grids for reconstruction evals: rows of images side by side, as one uint8 array a
PNG writer or TensorBoard takes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def denormalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``[..., C]`` normalised images (``(x - mean) / std``) -> values in ``[0, 1]``, clipped."""
    images = np.asarray(images, np.float32) * np.asarray(std, np.float32)
    return np.clip(images + np.asarray(mean, np.float32), 0.0, 1.0)


def image_grid(rows: Sequence[np.ndarray], *, pad: int = 2, scale: int = 1) -> np.ndarray:
    """``rows``: each ``[n, H, W, C]`` in ``[0, 1]`` (one row of ``n`` images; every row the
    same shape) -> ``[len(rows) * (H * scale + pad) + pad, n * (W * scale + pad) + pad, C]``
    uint8 on a white background, each image enlarged ``scale`` times (nearest neighbour)."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    shapes = {np.shape(row) for row in rows}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"every row must be [n, H, W, C] of one shape, got {sorted(shapes)}")
    n, height, width, channels = next(iter(shapes))
    height, width = height * scale, width * scale
    grid = np.ones((len(rows) * (height + pad) + pad, n * (width + pad) + pad, channels))
    for r, row in enumerate(rows):
        big = np.repeat(np.repeat(np.asarray(row, np.float32), scale, 1), scale, 2)
        for c in range(n):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            grid[top : top + height, left : left + width] = np.clip(big[c], 0.0, 1.0)
    return np.round(grid * 255).astype(np.uint8)
