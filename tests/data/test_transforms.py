"""Transforms: robust decoding, geometry, SimCLR determinism, tokenisation, skip markers."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxalign.data import transforms as T
from tests.data.test_sources import image_bytes


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def key(index: int = 0, epoch: int = 0, seed: int = 0) -> T.ExampleKey:
    return T.ExampleKey(seed, epoch, index)


# ---------------------------------------------------------------------------------------------
# decoding


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "missing_image"),
        (b"", "missing_image"),
        (b"definitely not an image", "corrupt_image"),
        (image_bytes(0)[:120], "corrupt_image"),  # truncated JPEG: header only
        (image_bytes(0)[: len(image_bytes(0)) // 2], "corrupt_image"),  # truncated mid-scan
        (image_bytes(0, fmt="PNG")[:-30], "corrupt_image"),
        (np.zeros((4, 4, 2), np.uint8), "corrupt_image"),
        (np.zeros((0, 4, 3), np.uint8), "corrupt_image"),
        ("a string", "corrupt_image"),
    ],
)
def test_decode_bad_data_raises_bad_example_only(data, reason):
    with pytest.raises(T.BadExample) as info:
        T.decode_image(data)
    assert info.value.reason == reason
    out = T.ImageTransform(8)({"image": data}, key())
    assert out == T.Skip(reason)


@pytest.mark.parametrize(
    "mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "I", "F", "YCbCr", "RGB"]
)
def test_every_mode_becomes_rgb(mode):
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA").convert(mode) if mode not in ("I;16",) else None
    if mode == "I;16":
        image = Image.fromarray(np.arange(35, dtype=np.uint16).reshape(5, 7) * 1800)
    fmt = {"CMYK": "JPEG", "YCbCr": "JPEG", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    for data in (image, encode(image, fmt)):
        rgb = T.decode_image(data)
        assert rgb.mode == "RGB" and rgb.size == (7, 5)
    if mode == "I;16":  # 16-bit values are rescaled, not clipped to white
        values = np.asarray(T.decode_image(image))[..., 0]
        assert values.min() == 0 and 200 < values.max() <= 255 and len(np.unique(values)) > 20


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque; the rest is transparent black
    rgb = np.asarray(T.decode_image(encode(Image.fromarray(rgba, "RGBA"))))
    assert tuple(rgb[0, 0]) == (10, 20, 30)
    assert (rgb[1, 1] == 255).all()


def test_arrays_and_odd_sizes_decode():
    assert T.decode_image(np.zeros((3, 4), np.uint8)).size == (4, 3)
    assert T.decode_image(np.zeros((3, 4, 1), np.uint8)).mode == "RGB"
    assert T.decode_image(np.zeros((3, 4, 4), np.uint8)).mode == "RGB"
    for size in [(1, 1), (1, 9), (517, 2), (3, 3)]:
        for train in (True, False):
            out = T.ImageTransform(16, train=train)({"image": image_bytes(1, size)}, key())
            assert out["image"].shape == (16, 16, 3) and out["image"].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# geometry and normalisation


def test_random_resized_crop_box_in_bounds():
    rng = np.random.default_rng(0)
    for width, height in [(1, 1), (1, 50), (50, 1), (7, 300), (256, 320), (3, 4)]:
        for _ in range(50):
            left, top, right, bottom = T.random_resized_crop_box(width, height, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_eval_transform_and_normalize():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 60, 3), np.uint8))
    record = {"image": encode(image)}
    raw = T.ImageTransform(16, train=False, normalize=False)(record, key())["image"]
    assert raw.shape == (16, 16, 3) and raw.dtype == np.uint8
    expected = T.resize_center_crop(image, 16)
    np.testing.assert_array_equal(raw, np.asarray(expected))
    normed = T.ImageTransform(16, train=False)(record, key(5))["image"]  # no randomness
    mean, std = np.asarray(T.CLIP_MEAN), np.asarray(T.CLIP_STD)
    np.testing.assert_allclose(normed, (raw / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    custom = T.normalize(raw, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert custom.dtype == np.float32 and custom.min() >= -1.0 and custom.max() <= 1.0


def test_train_transform_keyed_by_seed_epoch_index():
    record = {"image": image_bytes(3, (64, 48))}
    transform = T.ImageTransform(24, normalize=False)
    first = transform(record, key(4, epoch=1, seed=7))["image"]
    np.testing.assert_array_equal(first, transform(record, key(4, epoch=1, seed=7))["image"])
    for other in (key(5, 1, 7), key(4, 2, 7), key(4, 1, 8)):
        assert not np.array_equal(first, transform(record, other)["image"])
    rng = np.random.default_rng([7, 1, 4])
    assert key(4, 1, 7).rng().uniform() == rng.uniform()


# ---------------------------------------------------------------------------------------------
# SimCLR


def test_simclr_views_deterministic_and_different_across_indices():
    record = {"image": image_bytes(11, (80, 64))}
    transform = T.SimCLRTransform(32, normalize=False)
    a = transform(record, key(3, seed=1))
    b = transform(record, key(3, seed=1))
    assert set(a) == {"view1", "view2"}
    for view in ("view1", "view2"):
        assert a[view].shape == (32, 32, 3) and a[view].dtype == np.uint8
        np.testing.assert_array_equal(a[view], b[view])
    assert not np.array_equal(a["view1"], a["view2"])
    others = [transform(record, k) for k in (key(4, seed=1), key(3, epoch=1, seed=1), key(3, 0, 2))]
    for other in others:
        assert not np.array_equal(a["view1"], other["view1"])
    again = pickle.loads(pickle.dumps(transform))(record, key(3, seed=1))
    np.testing.assert_array_equal(a["view2"], again["view2"])
    assert transform({"image": b"broken"}, key()) == T.Skip("corrupt_image")


def test_simclr_augmentations_change_colour():
    image = T.decode_image(image_bytes(12, (64, 64)))
    rng = np.random.default_rng(0)
    jittered = T.color_jitter(image, rng)
    assert jittered.size == image.size and jittered.mode == "RGB"
    assert not np.array_equal(np.asarray(jittered), np.asarray(image))
    shifted = np.asarray(T.adjust_hue(image, 0.5)).astype(int)
    assert np.abs(shifted - np.asarray(image)).mean() > 10
    views = [np.asarray(T.simclr_augment(image, 16, rng)) for _ in range(8)]
    assert len({v.tobytes() for v in views}) == 8


# ---------------------------------------------------------------------------------------------
# tokenisation and captions


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, "a": 4, "photo": 5, "of": 6, "cat": 7}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)]
    )
    return tokenizer


def test_tokenizer_pads_and_truncates_to_fixed_length():
    tok = T.TextTokenizer(_tokenizer(), 8)
    ids, mask = tok("a photo of a cat")
    assert ids.shape == (8,) and mask.shape == (8,)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    np.testing.assert_array_equal(ids, [2, 4, 5, 6, 4, 7, 3, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 1, 0])
    ids, mask = tok("cat dog a photo of a cat a photo")  # too long: end token kept
    np.testing.assert_array_equal(ids, [2, 7, 1, 4, 5, 6, 4, 3])  # "dog" is unknown
    assert mask.all()
    batch_ids, batch_mask = tok.encode_batch(["cat", "a photo of a cat a cat"])
    assert batch_ids.shape == (2, 8) and batch_mask.shape == (2, 8)
    np.testing.assert_array_equal(batch_mask.sum(1), [3, 8])
    copy = pickle.loads(pickle.dumps(tok))
    np.testing.assert_array_equal(copy("a cat")[0], tok("a cat")[0])
    with pytest.raises(TypeError, match="tokenizer"):
        T.TextTokenizer(object(), 8)


def test_transformers_fast_tokenizer_gives_same_ids():
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=_tokenizer(), pad_token="[PAD]")
    ours = T.TextTokenizer(fast, 6)
    direct = T.TextTokenizer(_tokenizer(), 6)
    np.testing.assert_array_equal(ours("photo of cat")[0], direct("photo of cat")[0])
    reference = fast("photo of cat", padding="max_length", max_length=6)["input_ids"]
    np.testing.assert_array_equal(ours("photo of cat")[0], reference)
    assert T.TextTokenizer(_tokenizer(), 6, pad_id=9)("cat")[0][-1] == 9


def test_image_text_transform_skips_bad_captions():
    transform = T.ImageTextTransform(8, T.TextTokenizer(_tokenizer(), 5))
    image = image_bytes(0)
    out = transform({"image": image, "caption": b"a cat"}, key())
    assert out["image"].shape == (8, 8, 3) and out["ids"].shape == (5,)
    np.testing.assert_array_equal(out["mask"], [1, 1, 1, 1, 0])
    assert transform({"image": image, "caption": ""}, key()) == T.Skip("empty_caption")
    assert transform({"image": image, "caption": " \t"}, key()) == T.Skip("empty_caption")
    assert transform({"image": image, "caption": None}, key()) == T.Skip("missing_caption")
    assert transform({"image": image}, key()) == T.Skip("missing_caption")
    assert transform({"image": None, "caption": "cat"}, key()) == T.Skip("missing_image")
    captions = {"image": image, "caption": ["a cat", "a photo", "of a cat", "cat"]}
    picks = {tuple(transform(captions, key(i))["ids"]) for i in range(12)}
    assert len(picks) > 1  # one caption drawn per (seed, epoch, index) ...
    np.testing.assert_array_equal(
        transform(captions, key(3))["ids"], transform(captions, key(3))["ids"]
    )
