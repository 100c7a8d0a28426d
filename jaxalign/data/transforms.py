"""Per-example transforms: robust image decoding, crops and augmentations, tokenisation.

A *transform* is a callable ``transform(record, key) -> example | Skip``: ``record`` is the dict
of raw fields a source yields (``image`` as encoded bytes, a decoded ``[H, W, C]`` array or a PIL
image; ``caption`` as ``str`` or ``bytes``), ``key`` is the :class:`ExampleKey` ``(seed, epoch,
index)`` that seeds every random draw for that example, and the result is a dict of numpy
arrays (one example, no batch axis) or a :class:`Skip` marker naming why the example is dropped.
A bad example never raises: data problems (corrupt or missing image, missing or empty caption)
become ``Skip(reason)``, and the pipeline counts them per reason.

Randomness is ``np.random.default_rng([seed, epoch, index])``: the same example in the same epoch
gets the same crop on any number of hosts, devices or workers (docs/architecture.md, principle
6), and a different one in the next epoch. A transform whose output never depends on the key
says so with ``uses_key = False`` (an attribute or property; absent means it may): only such a
transform's outputs may be kept by an ``ExampleCache`` (:mod:`jaxalign.data.example_cache`).

The ready-made transforms are picklable classes, so they run in grain worker processes:

- :class:`ImageTransform`: ``{"image": [S, S, 3]}`` (+ ``"label"`` when asked);
- :class:`ImageTextTransform`: ``{"image": [S, S, 3], "ids": [L] int32, "mask": [L] int32}``;
- :class:`SimCLRTransform`: ``{"view1": [S, S, 3], "view2": [S, S, 3]}``.

Images come out ``uint8`` or, with ``normalize=True``, ``float32`` ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from jaxalign.data.image_ops import (  # noqa: F401 (re-exported)
    CLIP_MEAN,
    CLIP_STD,
    adjust_hue,
    center_crop,
    color_jitter,
    normalize,
    random_flip,
    random_resized_crop,
    random_resized_crop_box,
    resize_center_crop,
    resize_shorter,
    simclr_augment,
)
from jaxalign.data.tokenizer import TextTokenizer

# Skip reasons used by this module and the sources (others may add their own strings).
CORRUPT_IMAGE = "corrupt_image"
MISSING_IMAGE = "missing_image"
EMPTY_CAPTION = "empty_caption"
MISSING_CAPTION = "missing_caption"
SKIP_REASONS: tuple[str, ...] = (CORRUPT_IMAGE, MISSING_IMAGE, EMPTY_CAPTION, MISSING_CAPTION)

# A record field a source sets to a skip reason when it knows the record is unusable
# (e.g. a webdataset sample without an image member); the pipeline skips it before transforming.
SKIP_FIELD = "__skip__"

Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Skip:
    """Returned instead of an example: the example is dropped and counted under ``reason``;
    ``where`` (set by the pipeline: the record's key and file) is for error messages only."""

    reason: str
    where: str = dataclasses.field(default="", compare=False)


class BadExample(Exception):
    """Raised inside transforms for a data problem; callers turn it into ``Skip(reason)``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ExampleKey:
    """What seeds an example's randomness: ``(seed, epoch, index)``, ``index`` in the source."""

    seed: int
    epoch: int
    index: int

    def rng(self) -> np.random.Generator:
        """``np.random.default_rng([seed, epoch, index])``: independent of topology and workers."""
        return np.random.default_rng([self.seed, self.epoch, self.index])


Transform = Callable[[Mapping[str, Any], ExampleKey], "Example | Skip"]


# ---------------------------------------------------------------------------------------------
# Decoding


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> ``RGB``: alpha is composited on white, palettes expanded, CMYK converted,
    16-bit / 32-bit / float grayscale rescaled to 0..255."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;"):
        array = np.asarray(image, dtype=np.float64)
        top = float(array.max()) if array.size else 0.0
        if top > 255.0:
            array = array * (255.0 / (65535.0 if top <= 65535.0 else top))
        gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(data: Any, *, draft_size: int | None = None) -> Image.Image:
    """Encoded bytes, a ``[H, W]`` / ``[H, W, 1|3|4]`` uint8 array or a PIL image -> RGB PIL image.

    Truncated or corrupt bytes raise ``BadExample("corrupt_image")``, ``None`` or empty bytes
    ``BadExample("missing_image")``; PIL's own exceptions never escape. ``draft_size`` lets the
    JPEG decoder scale down by a power of two while keeping both sides ``>= draft_size``.
    EXIF orientation is applied.
    """
    if data is None:
        raise BadExample(MISSING_IMAGE)
    if isinstance(data, Image.Image):
        image = data
    elif isinstance(data, np.ndarray):
        array = data
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise BadExample(CORRUPT_IMAGE, f"array of shape {array.shape}")
        if array.size == 0:
            raise BadExample(CORRUPT_IMAGE, f"empty array {array.shape}")
        if array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise BadExample(MISSING_IMAGE, "empty bytes")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF warnings
                image = Image.open(io.BytesIO(data))
                if draft_size is not None and image.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                image.load()  # decode now, so truncation shows up here
                image = ImageOps.exif_transpose(image)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise BadExample(CORRUPT_IMAGE, f"{type(error).__name__}: {error}") from None
    else:
        raise BadExample(CORRUPT_IMAGE, f"unsupported image field of type {type(data).__name__}")
    if image.width < 1 or image.height < 1:
        raise BadExample(CORRUPT_IMAGE, f"image of size {image.size}")
    try:
        return to_rgb(image)
    except Exception as error:
        raise BadExample(CORRUPT_IMAGE, f"{type(error).__name__}: {error}") from None


# ---------------------------------------------------------------------------------------------
# Geometry


def _finish(image: Image.Image, norm: bool, mean: Sequence[float], std: Sequence[float]):
    """PIL RGB -> ``[H, W, 3]`` uint8, or float32 normalised."""
    return normalize(image, mean, std) if norm else np.asarray(image, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Text


def get_caption(record: Mapping[str, Any], key: str, rng: np.random.Generator | None = None) -> str:
    """The record's caption as ``str``: bytes are decoded as UTF-8 (bad bytes replaced); a list of
    captions gives one, drawn with ``rng`` (the first without). Raises ``BadExample`` with
    ``missing_caption`` (absent / ``None``) or ``empty_caption`` (only whitespace)."""
    caption = record.get(key)
    if isinstance(caption, np.ndarray) and caption.ndim == 0:
        caption = caption.item()
    if isinstance(caption, (list, tuple, np.ndarray)):
        if len(caption) == 0:
            raise BadExample(MISSING_CAPTION, "empty list of captions")
        pick = int(rng.integers(len(caption))) if rng is not None else 0
        caption = caption[pick]
    if caption is None:
        raise BadExample(MISSING_CAPTION)
    if isinstance(caption, (bytes, bytearray, np.bytes_)):
        caption = bytes(caption).decode("utf-8", errors="replace")
    caption = str(caption).strip()
    if not caption:
        raise BadExample(EMPTY_CAPTION)
    return caption


# ---------------------------------------------------------------------------------------------
# Ready-made transforms


def _with_label(out: Example, record: Mapping[str, Any], label_key: str | None) -> Example | Skip:
    """``out`` plus ``"label": [] int32`` from ``record[label_key]`` (unless ``label_key`` is
    None); a record without it is skipped."""
    if label_key is None:
        return out
    label = record.get(label_key)
    if label is None:
        return Skip("missing_label")
    return {**out, "label": np.asarray(label, dtype=np.int32)}


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """``record -> {"image": [S, S, 3]}`` (+ ``"label": [] int32`` when ``label_key`` is set).

    Training (``train=True``): random resized crop with area ``scale`` (bicubic) and, if ``flip``,
    a random left-right flip. Evaluation: shorter side to ``S`` then the central square. Output
    ``uint8``, or ``float32`` normalised with ``mean`` / ``std`` when ``normalize``.
    """

    image_size: int
    train: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    normalize: bool = True
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    image_key: str = "image"
    label_key: str | None = None

    @property
    def uses_key(self) -> bool:
        """Whether the output depends on the example's key: only training draws crops and
        flips (evaluation's is a function of the record: ``data.example_cache`` may keep it)."""
        return self.train

    def image(self, record: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
        """The ``[S, S, 3]`` image array; raises ``BadExample`` for bad data."""
        if self.train:
            image = decode_image(record.get(self.image_key))
            image = random_resized_crop(image, self.image_size, rng, scale=self.scale)
            if self.flip:
                image = random_flip(image, rng)
        else:
            image = decode_image(record.get(self.image_key), draft_size=self.image_size)
            image = resize_center_crop(image, self.image_size)
        return _finish(image, self.normalize, self.mean, self.std)

    def __call__(self, record: Mapping[str, Any], key: ExampleKey) -> Example | Skip:
        try:
            out = {"image": self.image(record, key.rng())}
        except BadExample as bad:
            return Skip(bad.reason)
        return _with_label(out, record, self.label_key)


@dataclasses.dataclass(frozen=True)
class ImageTextTransform:
    """``record -> {"image": [S, S, 3], "ids": [L] int32, "mask": [L] int32}`` for CLIP / SigLIP
    (+ ``"label": [] int32`` when ``label_key`` is set, for zero-shot evaluation).

    Image as :class:`ImageTransform` (defaults as open_clip's training: area scale 0.9..1, no
    flip, since captions name left and right); caption (``caption_key``; one drawn at random from
    a list) tokenised to ``L = tokenizer.max_length``. A missing or empty caption, a bad image or
    a missing label gives ``Skip``.
    """

    image_size: int
    tokenizer: TextTokenizer
    train: bool = True
    scale: tuple[float, float] = (0.9, 1.0)
    flip: bool = False
    normalize: bool = True
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    image_key: str = "image"
    caption_key: str = "caption"
    label_key: str | None = None

    def __call__(self, record: Mapping[str, Any], key: ExampleKey) -> Example | Skip:
        rng = key.rng()
        image_fn = ImageTransform(
            self.image_size,
            train=self.train,
            scale=self.scale,
            flip=self.flip,
            normalize=self.normalize,
            mean=self.mean,
            std=self.std,
            image_key=self.image_key,
        )
        try:
            caption = get_caption(record, self.caption_key, rng)
            image = image_fn.image(record, rng)
        except BadExample as bad:
            return Skip(bad.reason)
        ids, mask = self.tokenizer(caption)
        out = {"image": image, "ids": ids, "mask": mask}
        return _with_label(out, record, self.label_key)


@dataclasses.dataclass(frozen=True)
class SimCLRTransform:
    """``record -> {"view1": [S, S, 3], "view2": [S, S, 3]}``: two :func:`simclr_augment` views
    of one image, drawn in turn from ``ExampleKey.rng()`` (so the pair is fixed by
    ``(seed, epoch, index)`` and differs between indices and epochs)."""

    image_size: int
    strength: float = 1.0
    scale: tuple[float, float] = (0.08, 1.0)
    blur: bool = True
    normalize: bool = True
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    image_key: str = "image"

    def __call__(self, record: Mapping[str, Any], key: ExampleKey) -> Example | Skip:
        try:
            image = decode_image(record.get(self.image_key))
        except BadExample as bad:
            return Skip(bad.reason)
        rng = key.rng()
        views = [
            simclr_augment(
                image,
                self.image_size,
                rng,
                strength=self.strength,
                scale=self.scale,
                blur=self.blur,
            )
            for _ in range(2)
        ]
        return {
            "view1": _finish(views[0], self.normalize, self.mean, self.std),
            "view2": _finish(views[1], self.normalize, self.mean, self.std),
        }
