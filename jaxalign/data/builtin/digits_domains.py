"""``digits_domains``: a three-domain digits benchmark built offline from scikit-learn's files.

Domains (``DOMAINS``), each the same 1797 digits drawn another way:

- ``source``: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``, 8x8
  pixels, values 0..16), upsampled (bicubic) to ``image_size`` x ``image_size`` (32 by
  default), white strokes on black, as RGB.
- ``blend``: the digits made the way MNIST-M was made (Ganin et al., "Domain-Adversarial
  Training of Neural Networks", JMLR 2016): each digit blended with a random crop of a colour
  photo, ``out = |background - digit|`` per channel. The photos are the two scikit-learn ships
  (``sklearn.datasets.load_sample_images``: china.jpg, flower.jpg); a crop has a random photo,
  side (``image_size`` to ``4 * image_size`` pixels, resized to ``image_size``) and place.
- ``rotated``: the source digit turned by a random angle (``ROTATION_DEGREES`` either way),
  then additive Gaussian noise (``NOISE_STD`` grey levels, the same in all channels), clipped
  to 0..255: a geometric and noise shift with no colour change, unlike ``blend``.

Splits: a stratified 70/15/15 partition of the 1797 digits (``split_indices``), the same for
every domain, so no ``*_test`` split holds a digit of any ``*_train`` split:
``<domain>_train``, ``<domain>_validation``, ``<domain>_test`` for each domain. Records are in
increasing ``digit_index`` order; records of two domains with the same ``digit_index`` have the
same label.

Determinism: the partition comes from ``np.random.default_rng([seed, class])``; the crop of digit
``i`` from ``np.random.default_rng([seed, i])`` (as in version 1, whose ``target`` domain is
today's ``blend``), its angle and noise from ``np.random.default_rng([seed, i, 2])``; records
are serialised deterministically, so two builds give byte-identical array_record files (given
the same libjpeg/zlib, which decode the photos and encode the PNGs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core import writer as writer_lib

from jaxalign.data.builtin.records import DeterministicExampleWriter, encode_png

DOMAINS: tuple[str, ...] = ("source", "blend", "rotated")
ROTATION_DEGREES = 45.0  # the rotated domain's angle: uniform in [-45, 45] degrees
NOISE_STD = 40.0  # the rotated domain's Gaussian noise, in grey levels of 0..255
PARTS: tuple[str, ...] = ("train", "validation", "test")
FRACTIONS: dict[str, float] = {"train": 0.70, "validation": 0.15, "test": 0.15}
SPLITS: tuple[str, ...] = tuple(f"{d}_{p}" for d in DOMAINS for p in PARTS)
CITATION = """@article{ganin2016domain,
  title={Domain-Adversarial Training of Neural Networks},
  author={Ganin, Yaroslav and Ustinova, Evgeniya and Ajakan, Hana and Germain, Pascal
          and Larochelle, Hugo and Laviolette, Fran{\\c{c}}ois and Marchand, Mario
          and Lempitsky, Victor},
  journal={Journal of Machine Learning Research}, volume={17}, number={59}, pages={1--35},
  year={2016}
}"""


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits -> (images [1797, 8, 8] float64 in 0..16, labels [1797] int64)."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = sklearn_load_digits()
    return digits.images, digits.target.astype(np.int64)


def load_photos() -> list[np.ndarray]:
    """scikit-learn's sample photos (china.jpg, flower.jpg) -> list of [427, 640, 3] uint8."""
    from sklearn.datasets import load_sample_images

    return [np.asarray(image, dtype=np.uint8) for image in load_sample_images().images]


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Stratified 70/15/15 partition of ``range(len(labels))``; labels [N] -> part -> sorted ids.

    Each class is permuted with ``np.random.default_rng([seed, class])`` and cut at
    ``floor(0.70 n)`` and ``floor(0.85 n)``.
    """
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    for label in np.unique(labels):
        ids = np.flatnonzero(labels == label)
        ids = np.random.default_rng([seed, int(label)]).permutation(ids)
        cut1 = int(np.floor(FRACTIONS["train"] * len(ids)))
        cut2 = int(np.floor((FRACTIONS["train"] + FRACTIONS["validation"]) * len(ids)))
        for part, chunk in zip(PARTS, np.split(ids, [cut1, cut2]), strict=True):
            parts[part].append(chunk)
    return {p: np.sort(np.concatenate(chunks)) for p, chunks in parts.items()}


def source_image(digit: np.ndarray, image_size: int) -> np.ndarray:
    """[8, 8] in 0..16 -> [image_size, image_size, 3] uint8 (bicubic upsampling, grey RGB)."""
    grey = PIL.Image.fromarray(np.round(digit * (255.0 / 16.0)).astype(np.uint8))
    grey = grey.resize((image_size, image_size), PIL.Image.Resampling.BICUBIC)
    return np.repeat(np.asarray(grey, dtype=np.uint8)[:, :, None], 3, axis=2)


def random_crop(rng: np.random.Generator, photos: list[np.ndarray], image_size: int) -> np.ndarray:
    """A random square crop of a random photo, resized -> [image_size, image_size, 3] uint8."""
    photo = photos[int(rng.integers(len(photos)))]
    height, width = photo.shape[:2]
    side = int(rng.integers(image_size, min(4 * image_size, height, width) + 1))
    top = int(rng.integers(height - side + 1))
    left = int(rng.integers(width - side + 1))
    crop = PIL.Image.fromarray(photo[top : top + side, left : left + side])
    crop = crop.resize((image_size, image_size), PIL.Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8)


def rotate_and_add_noise(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    """The ``rotated`` domain: [H, W, 3] uint8 -> the digit turned by an angle uniform in
    ``[-ROTATION_DEGREES, ROTATION_DEGREES]`` (bilinear, black fill) plus Gaussian noise of
    ``NOISE_STD`` grey levels, clipped -> [H, W, 3] uint8."""
    angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    turned = PIL.Image.fromarray(digit).rotate(angle, resample=PIL.Image.Resampling.BILINEAR)
    noise = rng.normal(0.0, NOISE_STD, size=digit.shape[:2])[:, :, None]
    return np.clip(np.asarray(turned, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8)


def blend(background: np.ndarray, digit: np.ndarray) -> np.ndarray:
    """MNIST-M blend: [H, W, 3] uint8 x [H, W, 3] uint8 -> |background - digit| [H, W, 3] uint8."""
    return np.abs(background.astype(np.int16) - digit.astype(np.int16)).astype(np.uint8)


@dataclasses.dataclass(eq=False)
class DigitsDomainsConfig(tfds.core.BuilderConfig):
    """Build options. The config's name encodes them, so each variant has its own directory."""

    image_size: int = 32
    seed: int = 0


_OPTIONS = ("image_size", "seed")
DEFAULT_CONFIG = DigitsDomainsConfig(name="default", description="32x32 images")


def make_config(**options: int) -> DigitsDomainsConfig:
    """A config from keyword options (``_OPTIONS``); ``DEFAULT_CONFIG`` when all are defaults.

    Raises:
      ValueError: an unknown option, or a bad value (image_size in 8..106, seed >= 0).
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown digits_domains option(s) {unknown}; choices: {list(_OPTIONS)}")
    values = {k: options.get(k, getattr(DEFAULT_CONFIG, k)) for k in _OPTIONS}
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"digits_domains option {key}={value!r} must be an int >= 0")
    if not 8 <= values["image_size"] <= 106:  # 4 * image_size must fit in the 427-pixel photos
        raise ValueError(f"digits_domains option image_size={values['image_size']} not in 8..106")
    if all(values[k] == getattr(DEFAULT_CONFIG, k) for k in _OPTIONS):
        return DEFAULT_CONFIG  # tfds wants the registered instance itself, not an equal copy
    name = "_".join(f"{k}{values[k]}" for k in _OPTIONS)
    return DigitsDomainsConfig(name=name, description=f"{values}", **values)


class DigitsDomains(tfds.core.GeneratorBasedBuilder):
    """scikit-learn digits (source), their MNIST-M-style blends with photos (blend), and
    turned, noisy copies (rotated)."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {  # noqa: RUF012 (tfds class attribute)
        "1.0.0": "First release: source and target (the MNIST-M-style blend).",
        "2.0.0": "Three domains: target renamed blend; rotated (turned and noisy) added.",
    }
    BUILDER_CONFIGS = [DEFAULT_CONFIG]  # noqa: RUF012 (tfds class attribute)

    @classmethod
    def make_config(cls, **options: int) -> DigitsDomainsConfig:
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
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                    "domain": tfds.features.ClassLabel(names=list(DOMAINS)),
                    "digit_index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # records stay in digit_index order
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # nothing to download: both sources ship with scikit-learn
        images, labels = load_digits()
        photos = load_photos()
        parts = split_indices(labels, self.builder_config.seed)
        return {
            f"{domain}_{part}": self._generate_examples(domain, parts[part], images, labels, photos)
            for domain in DOMAINS
            for part in PARTS
        }

    def _generate_examples(
        self,
        domain: str,
        ids: np.ndarray,
        images: np.ndarray,
        labels: np.ndarray,
        photos: list[np.ndarray],
    ) -> Iterator[tuple[int, dict]]:
        """Yields ``(digit_index, example)`` for the digits ``ids`` [n] of one domain's split."""
        config = self.builder_config
        for index in ids.tolist():
            image = source_image(images[index], config.image_size)
            if domain == "blend":
                rng = np.random.default_rng([config.seed, index])
                image = blend(random_crop(rng, photos, config.image_size), image)
            elif domain == "rotated":
                image = rotate_and_add_noise(np.random.default_rng([config.seed, index, 2]), image)
            yield (
                index,
                {
                    "image": encode_png(image),
                    "label": int(labels[index]),
                    "domain": DOMAINS.index(domain),
                    "digit_index": index,
                },
            )
