"""Image geometry and colour operations on PIL images, each random one driven by a numpy
``Generator`` (seeded per example by the caller, so results never depend on the topology).

Resize / crop (center, random resized crop as in Szegedy et al. 2015 and torchvision), flip,
colour jitter, the SimCLR augmentation (Chen et al. 2020) and normalisation to ``float32``
``[H, W, 3]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def resize_shorter(
    image: Image.Image, size: int, resample: int = Image.Resampling.BICUBIC
) -> Image.Image:
    """Resizes so that the shorter side is ``size``, keeping the aspect ratio (long side >= 1)."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image if new == image.size else image.resize(new, resample=resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size x size`` window (padding with black where the image is smaller)."""
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_center_crop(
    image: Image.Image, size: int, resample: int = Image.Resampling.BICUBIC
) -> Image.Image:
    """Evaluation geometry: shorter side to ``size``, then the central square."""
    return center_crop(resize_shorter(image, size, resample), size)


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box ``(left, top, right, bottom)``: an area fraction in
    ``scale`` and an aspect ratio in ``ratio`` (log-uniform), 10 tries, then a central crop with
    the ratio clamped. Works for any size down to 1 x 1."""
    area = width * height
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
        w = round(np.sqrt(target_area * aspect))
        h = round(np.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, max(1, round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def random_resized_crop(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    resample: int = Image.Resampling.BICUBIC,
) -> Image.Image:
    """A random box (:func:`random_resized_crop_box`) resized to ``size x size`` in one step."""
    box = random_resized_crop_box(image.width, image.height, rng, scale, ratio)
    return image.resize((size, size), resample=resample, box=box)


def random_flip(image: Image.Image, rng: np.random.Generator, p: float = 0.5) -> Image.Image:
    """Mirrors left-right with probability ``p`` (one uniform draw, always made)."""
    flip = rng.uniform() < p
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


# ---------------------------------------------------------------------------------------------
# Colour (SimCLR)


def adjust_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotates hue by ``shift`` of the colour circle (``-0.5 .. 0.5``)."""
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def color_jitter(
    image: Image.Image,
    rng: np.random.Generator,
    brightness: float = 0.8,
    contrast: float = 0.8,
    saturation: float = 0.8,
    hue: float = 0.2,
) -> Image.Image:
    """torchvision's ColorJitter: factors uniform in ``[1 - s, 1 + s]`` (hue shift in
    ``[-hue, hue]``), the four adjustments applied in a random order."""
    factors = (
        rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
        rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
        rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
        rng.uniform(-hue, hue),
    )
    for op in rng.permutation(4):
        if op == 0:
            image = ImageEnhance.Brightness(image).enhance(factors[0])
        elif op == 1:
            image = ImageEnhance.Contrast(image).enhance(factors[1])
        elif op == 2:
            image = ImageEnhance.Color(image).enhance(factors[2])
        elif hue > 0:
            image = adjust_hue(image, factors[3])
    return image


def simclr_augment(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    *,
    strength: float = 1.0,
    scale: tuple[float, float] = (0.08, 1.0),
    blur: bool = True,
) -> Image.Image:
    """One SimCLR view: random resized crop, flip, colour jitter (p=0.8, strength ``s``: 0.8s
    brightness / contrast / saturation, 0.2s hue), grayscale (p=0.2), gaussian blur (p=0.5,
    sigma uniform in [0.1, 2.0] at 224 px, scaled with ``size``). Every draw is made whether or
    not it is used, so a view consumes a fixed number of draws besides the crop's tries."""
    image = random_resized_crop(image, size, rng, scale=scale)
    image = random_flip(image, rng)
    jitter, gray, blurred = rng.uniform(size=3)
    if jitter < 0.8:
        s = strength
        image = color_jitter(image, rng, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    if gray < 0.2:
        image = image.convert("L").convert("RGB")
    sigma = rng.uniform(0.1, 2.0) * size / 224
    if blur and blurred < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=sigma))
    return image


# ---------------------------------------------------------------------------------------------
# Arrays


def normalize(
    image: np.ndarray | Image.Image,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
    """``[..., 3]`` uint8 -> float32 ``(x / 255 - mean) / std``."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
