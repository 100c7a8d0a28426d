"""``shapes_captions``: procedurally drawn coloured shapes with captions from a small grammar.

Every example is a square RGB image (``image_size`` x ``image_size``, 64 by default) showing
``count`` copies of one shape in one colour and one size, and a caption that says so, e.g.
``"two small red circles at the top"``. One shape sits in a quadrant or in the center
(``"a large blue star at the bottom left"``); two shapes take the two quadrants along one side
(top, bottom, left or right), one each. The grammar is closed (``VOCABULARY`` lists every word it
can produce), so a word-level tokenizer covers it exactly.

Shapes are large (a fifth to a third of the image across) and never share a quadrant: version 1
drew up to three shapes a few pixels wide in one quadrant, and a small model learnt colour,
position and count from its captions long before shape (zero-shot top-1 under 0.3 after a few
minutes of CPU training). ``PROMPT_TEMPLATES`` are the grammar's sentences with the colour and
shape left out, for zero-shot prompt ensembling.

Zero-shot classification: ``label`` is the (colour, shape) class, ``label = colour * len(SHAPES) +
shape``, and the ClassLabel's names (``CLASS_NAMES``, e.g. ``"red circle"``) build the prompts.

Compositional generalisation: the (colour, shape) pairs in ``HELD_OUT_COMBOS`` never appear in the
``train`` or ``validation`` splits; the ``test`` split holds only those pairs. Every colour and
every shape on its own still appears in training. ``heldout_validation`` (``num_validation``
scenes of its own) draws the held-out pairs too: a validation split for choices that the test
split's compositional figure depends on (a loss weight, a checkpoint), so that none is made on
``test``.

A second domain, for adaptation: the ``outline_*`` splits draw scenes as outlines (no fill) on
a textured background (stripes and per-pixel noise); captions and labels as in the filled
domain. ``outline_train`` holds ``max(1, num_train // 2)`` scenes of its own (the training
pairs; for an unlabelled target stream), ``outline_test`` the ``test`` split's very scenes
(same captions, labels and places), so zero-shot accuracy on the two test splits compares the
domains alone.

Determinism: example ``i`` of split ``s`` is drawn from ``np.random.default_rng([seed,
SPLIT_IDS[s], i])`` alone (``s`` the split whose scenes it draws; an outline's texture from
``[seed, SPLIT_IDS[s], i, 1]``), and records are written in index order with a deterministic
proto serialisation (``DeterministicExampleWriter``), so two builds give byte-identical files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core import writer as writer_lib

from jaxalign.data.builtin.records import DeterministicExampleWriter, encode_png

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SIZES: tuple[str, ...] = ("small", "large")
COUNTS: tuple[int, ...] = (1, 2)
COUNT_WORDS: dict[int, tuple[str, ...]] = {1: ("a", "one"), 2: ("two",)}
# Where the shapes are, by count: the quadrants they fill (``QUADRANTS``: 0 top left, 1 top right,
# 2 bottom left, 3 bottom right; None: the central square), and the prepositions each name takes.
PLACES: dict[int, dict[str, tuple[tuple[int | None, ...], tuple[str, ...]]]] = {
    1: {
        "top left": ((0,), ("at", "in")),
        "top right": ((1,), ("at", "in")),
        "bottom left": ((2,), ("at", "in")),
        "bottom right": ((3,), ("at", "in")),
        "center": ((None,), ("in",)),
    },
    2: {
        "top": ((0, 1), ("at",)),
        "bottom": ((2, 3), ("at",)),
        "left": ((0, 2), ("on",)),
        "right": ((1, 3), ("on",)),
    },
}
POSITIONS: tuple[str, ...] = tuple(name for places in PLACES.values() for name in places)

# (colour, shape) pairs that only the test split shows: one per colour, every shape at least
# once; the shape held out twice (circle) goes with two colours far apart in hue (blue, orange),
# so no shape is unseen in a whole region of hues (version 1 held out both red and orange
# triangles: no warm triangle was ever seen).
HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("purple", "diamond"),
    ("orange", "circle"),
)
TRAIN_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in HELD_OUT_COMBOS
)
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES)

# Caption templates; {n} count word, {size} {colour} {shapes} (plural when count > 1),
# {prep} the position's preposition, {position}; {be} "is"/"are".
TEMPLATES: tuple[str, ...] = (
    "{n} {size} {colour} {shapes} {prep} the {position}",
    "there {be} {n} {size} {colour} {shapes} {prep} the {position}",
    "a picture of {n} {size} {colour} {shapes} {prep} the {position}",
)
SPLIT_IDS: dict[str, int] = {
    "train": 0,
    "validation": 1,
    "test": 2,
    "outline_train": 3,
    "heldout_validation": 4,
}
# Splits whose scenes show only the held-out (colour, shape) pairs.
HELD_OUT_SPLITS: tuple[str, ...] = ("test", "heldout_validation")
# The outline domain's splits and the split whose scenes each draws.
OUTLINE_SCENES: dict[str, str] = {"outline_train": "outline_train", "outline_test": "test"}
TEXTURE_STRIPES, TEXTURE_NOISE = 30.0, 30.0  # amplitudes, in grey levels of 0..255

# Radii as fractions of the image side; shapes of one example share the size (+-8% jitter).
_RADIUS = {"small": 0.13, "large": 0.2}
_SUPERSAMPLE = 4


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce, sorted (deterministic)."""
    words: set[str] = set()
    for template in TEMPLATES:
        words.update(w for w in template.split() if not w.startswith("{"))
    words.update({"is", "are"})
    words.update(w for ws in COUNT_WORDS.values() for w in ws)
    words.update(SIZES)
    words.update(COLOUR_NAMES)
    words.update(SHAPES)
    words.update(f"{s}s" for s in SHAPES)
    for places in PLACES.values():
        for position, (_, preps) in places.items():
            words.update(position.split())
            words.update(preps)
    return sorted(words)


def prompt_templates() -> tuple[str, ...]:
    """The grammar's sentences with ``{}`` where "<colour> <shape>" goes (``{}s`` when plural):
    every template, count, size and position (each with its first count word and preposition),
    for prompt ensembling in zero-shot classification by (colour, shape)."""
    prompts = []
    for template in TEMPLATES:
        for count in COUNTS:
            for size in SIZES:
                for position, (_, preps) in PLACES[count].items():
                    sentence = template.format(
                        n=COUNT_WORDS[count][0],
                        size=size,
                        colour="{}",
                        shapes="\0",  # the shape word follows the colour: "{}" covers both
                        prep=preps[0],
                        position=position,
                        be="is" if count == 1 else "are",
                    )
                    prompts.append(sentence.replace(" \0", "" if count == 1 else "s"))
    return tuple(prompts)


VOCABULARY: tuple[str, ...] = tuple(vocabulary())
PROMPT_TEMPLATES: tuple[str, ...] = prompt_templates()


@dataclasses.dataclass(frozen=True)
class Scene:
    """Attributes of one example; indices into the module's attribute tuples."""

    colour: int
    shape: int
    size: int
    count: int  # number of shapes, 1 or 2
    position: int  # into POSITIONS (one of PLACES[count])
    template: int
    count_word: int  # index into COUNT_WORDS[count]
    preposition: int  # index into the position's prepositions

    @property
    def label(self) -> int:
        """(colour, shape) class index into ``CLASS_NAMES``."""
        return self.colour * len(SHAPES) + self.shape

    @property
    def place(self) -> tuple[tuple[int | None, ...], tuple[str, ...]]:
        """(quadrants, prepositions) of the scene's position."""
        return PLACES[self.count][POSITIONS[self.position]]


def sample_scene(rng: np.random.Generator, combos: tuple[tuple[str, str], ...]) -> Scene:
    """Draws the attributes of one example; (colour, shape) uniformly from ``combos``."""
    colour, shape = combos[int(rng.integers(len(combos)))]
    count = COUNTS[int(rng.integers(len(COUNTS)))]
    places = list(PLACES[count])
    position = places[int(rng.integers(len(places)))]
    return Scene(
        colour=COLOUR_NAMES.index(colour),
        shape=SHAPES.index(shape),
        size=int(rng.integers(len(SIZES))),
        count=count,
        position=POSITIONS.index(position),
        template=int(rng.integers(len(TEMPLATES))),
        count_word=int(rng.integers(len(COUNT_WORDS[count]))),
        preposition=int(rng.integers(len(PLACES[count][position][1]))),
    )


def caption(scene: Scene) -> str:
    """The grammar's sentence for ``scene``, e.g. ``"two small red circles at the top"``."""
    shape = SHAPES[scene.shape]
    return TEMPLATES[scene.template].format(
        n=COUNT_WORDS[scene.count][scene.count_word],
        size=SIZES[scene.size],
        colour=COLOUR_NAMES[scene.colour],
        shapes=shape if scene.count == 1 else f"{shape}s",
        prep=scene.place[1][scene.preposition],
        position=POSITIONS[scene.position],
        be="is" if scene.count == 1 else "are",
    )


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` centred at (cx, cy) with circumradius ~``r`` (pixels)."""
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    elif shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:
        raise ValueError(f"not a polygon: {shape!r}")
    return [(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(radii, angles, strict=True)]


def _centres(
    rng: np.random.Generator, scene: Scene, radius: float, size: int
) -> list[tuple[float, float]]:
    """Centres (pixels) of the scene's shapes: one per quadrant of its place (or the central
    half-size square), anywhere inside it that keeps the shape whole."""
    half = size / 2
    lo, hi = radius + 1, max(half - radius - 1, radius + 1)
    centres = []
    for quadrant in scene.place[0]:
        x0, y0 = (
            (size / 4, size / 4)
            if quadrant is None
            else (half * (quadrant % 2), half * (quadrant // 2))
        )
        centres.append((x0 + rng.uniform(lo, hi), y0 + rng.uniform(lo, hi)))
    return centres


def render(
    rng: np.random.Generator,
    scene: Scene,
    image_size: int,
    texture: np.random.Generator | None = None,
) -> np.ndarray:
    """Draws ``scene`` -> [image_size, image_size, 3] uint8 (anti-aliased by supersampling);
    with ``texture``, the outline domain: outlines on a background of stripes and noise drawn
    from ``texture`` (``rng`` is read exactly as for the filled domain, so the scene's shapes,
    colours and places are the same)."""
    background = tuple(int(v) for v in rng.integers(15, 95) + rng.integers(-10, 11, size=3))
    jitter = rng.integers(-15, 16, size=3)
    fill = tuple(
        int(np.clip(v + j, 0, 255))
        for v, j in zip(COLOURS[COLOUR_NAMES[scene.colour]], jitter, strict=True)
    )
    radius = _RADIUS[SIZES[scene.size]] * image_size * rng.uniform(0.92, 1.08)
    centres = _centres(rng, scene, radius, image_size)

    k = _SUPERSAMPLE
    canvas = PIL.Image.new("RGB", (image_size * k, image_size * k), background)
    draw = PIL.ImageDraw.Draw(canvas)
    shape = SHAPES[scene.shape]
    width = 0 if texture is None else k * max(1, round(image_size / 24))
    paint = {"fill": fill} if texture is None else {"outline": fill, "width": width}
    for cx, cy in centres:
        cx, cy, r = cx * k, cy * k, radius * k
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), **paint)
        else:
            draw.polygon(_polygon(shape, cx, cy, r), **paint)
    canvas = canvas.resize((image_size, image_size), PIL.Image.Resampling.BOX)
    image = np.asarray(canvas, dtype=np.uint8)
    return image if texture is None else _textured(texture, image, background)


def _textured(rng: np.random.Generator, image: np.ndarray, background: tuple) -> np.ndarray:
    """Adds stripes (a random angle and period) and per-pixel noise to the background of an
    outline image, leaving the outlines as drawn."""
    size = image.shape[0]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    y, x = np.mgrid[0:size, 0:size]
    stripes = TEXTURE_STRIPES * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    noise = rng.normal(0.0, TEXTURE_NOISE, size=(size, size, 3))
    base = np.asarray(background, np.float64)
    away = np.abs(image.astype(np.float64) - base).sum(-1) / 3  # 0 on pure background
    weight = np.clip(1 - away / 40.0, 0, 1)[..., None]  # texture fades out on the outlines
    out = image + weight * (stripes[..., None] + noise)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def make_example(seed: int, split: str, index: int, image_size: int) -> dict[str, Any]:
    """Example ``index`` of ``split``: a dict of the builder's features (image as PNG bytes)."""
    scenes = OUTLINE_SCENES.get(split, split)
    rng = np.random.default_rng([seed, SPLIT_IDS[scenes], index])
    combos = HELD_OUT_COMBOS if scenes in HELD_OUT_SPLITS else TRAIN_COMBOS
    scene = sample_scene(rng, combos)
    texture = None
    if split in OUTLINE_SCENES:
        texture = np.random.default_rng([seed, SPLIT_IDS[scenes], index, 1])
    image = render(rng, scene, image_size, texture)
    return {
        "image": encode_png(image),
        "caption": caption(scene),
        "label": scene.label,
        "colour": scene.colour,
        "shape": scene.shape,
        "size": scene.size,
        "count": scene.count,
        "position": scene.position,
        "index": index,
    }


@dataclasses.dataclass(eq=False)
class ShapesCaptionsConfig(tfds.core.BuilderConfig):
    """Build options. The config's name encodes them, so each variant has its own directory."""

    image_size: int = 64
    num_train: int = 4096
    num_validation: int = 512
    num_test: int = 512
    seed: int = 0


_OPTIONS = ("image_size", "num_train", "num_validation", "num_test", "seed")
DEFAULT_CONFIG = ShapesCaptionsConfig(name="default", description="64x64 images, 4096/512/512")


def make_config(**options: int) -> ShapesCaptionsConfig:
    """A config from keyword options (``_OPTIONS``); ``DEFAULT_CONFIG`` when all are defaults.

    Other configs are named after all their values (``image_size32_num_train256_...``), so each
    variant is built in its own directory ``shapes_captions/<name>/<version>``.

    Raises:
      ValueError: an unknown option, or a value that is not a positive int (seed: >= 0).
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown shapes_captions option(s) {unknown}; choices: {list(_OPTIONS)}")
    defaults = DEFAULT_CONFIG
    values = {k: options.get(k, getattr(defaults, k)) for k in _OPTIONS}
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (key != "seed"):
            raise ValueError(f"shapes_captions option {key}={value!r} must be a positive int")
    if values["image_size"] < 16:
        raise ValueError(f"shapes_captions option image_size={values['image_size']} is below 16")
    if all(values[k] == getattr(defaults, k) for k in _OPTIONS):
        return DEFAULT_CONFIG  # tfds wants the registered instance itself, not an equal copy
    name = "_".join(f"{k}{values[k]}" for k in _OPTIONS)
    return ShapesCaptionsConfig(name=name, description=f"{values}", **values)


class ShapesCaptions(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes with compositional captions; test split = held-out (colour, shape) pairs."""

    VERSION = tfds.core.Version("3.1.0")
    RELEASE_NOTES = {  # noqa: RUF012 (tfds class attribute)
        "1.0.0": "First release.",
        "2.0.0": "Large shapes, one per quadrant; counts 1 and 2; positions by count.",
        "3.0.0": "The outline domain: outline_train and outline_test (the test scenes).",
        "3.1.0": "heldout_validation: scenes of the held-out pairs for validation.",
    }
    BUILDER_CONFIGS = [DEFAULT_CONFIG]  # noqa: RUF012 (tfds class attribute)

    @classmethod
    def make_config(cls, **options: int) -> ShapesCaptionsConfig:
        """See the module-level ``make_config``."""
        return make_config(**options)

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. tfds's own lookup needs ``importlib_resources``, absent on Python >= 3.9."""
        return epath.Path(__file__)

    def _example_writer(self) -> writer_lib.ExampleWriter:
        return DeterministicExampleWriter(file_format=self.info.file_format)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "caption": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "colour": tfds.features.ClassLabel(names=list(COLOUR_NAMES)),
                    "shape": tfds.features.ClassLabel(names=list(SHAPES)),
                    "size": tfds.features.ClassLabel(names=list(SIZES)),
                    "count": tfds.features.Scalar(dtype=np.int32),
                    "position": tfds.features.ClassLabel(names=list(POSITIONS)),
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # records stay in index order
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # nothing to download
        config = self.builder_config
        sizes = {
            "train": config.num_train,
            "validation": config.num_validation,
            "test": config.num_test,
            "outline_train": max(1, config.num_train // 2),
            "outline_test": config.num_test,
            "heldout_validation": config.num_validation,
        }
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, num: int) -> Iterator[tuple[int, dict]]:
        """Yields ``(index, example)`` for ``index`` in ``range(num)``; keys are the indices."""
        config = self.builder_config
        for index in range(num):
            yield index, make_example(config.seed, split, index, config.image_size)
