"""Built-in datasets: offline builds, byte-identical rebuilds, and what reads back.

Both datasets are built from nothing twice: once for the test session (in this worker or the
other one: ``tests/conftest.py``) and once in a fresh Python process with another
``PYTHONHASHSEED`` (a second build in the same process could hide
per-process nondeterminism, such as the proto map order that ``DeterministicExampleWriter``
fixes). Build times are printed (``pytest -s``), never asserted.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from jaxalign.data.builtin import (
    BUILTIN,
    SPECIAL_TOKENS,
    TOKENIZER_STAMP,
    build_caption_tokenizer,
    caption_corpus,
    load_caption_tokenizer,
    prepare,
)
from jaxalign.data.builtin import digits_domains as dd
from jaxalign.data.builtin import shapes_captions as sc

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("shapes_captions", "digits_domains")
SHAPES_COUNTS = {
    "train": 4096,
    "validation": 512,
    "test": 512,
    "outline_train": 2048,
    "outline_test": 512,
    "heldout_validation": 512,
}

_REBUILD = """
import sys, time
from jaxalign.data.builtin import prepare
for name in sys.argv[2:]:
    start = time.perf_counter()
    prepare(name, sys.argv[1])
    print("BUILD_SECONDS", name, time.perf_counter() - start)
"""


@pytest.fixture(scope="module")
def built(builtin_data_dir: str) -> Path:
    """Both datasets built from nothing for the test session (by this worker or the other
    one; the trainer tests read the same build: tests/conftest.py); returns the data_dir."""
    return Path(builtin_data_dir)


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory, built: Path) -> Path:
    """Both datasets built again in a fresh process (other hash seed); returns the data_dir."""
    data_dir = tmp_path_factory.mktemp("build_b")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", _REBUILD, str(data_dir), *NAMES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for line in result.stdout.splitlines():
        if line.startswith("BUILD_SECONDS"):
            _, name, seconds = line.split()
            print(f"\n{name}: rebuilt from nothing in a fresh process in {float(seconds):.1f} s")
    return data_dir


def _png(image: np.ndarray) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(image)))


def test_a_build_says_it_generates_and_nothing_of_downloads(tmp_path: Path, capfd):
    """A first build prints two lines of its own (the data is generated here) and none of
    tfds's: no "downloading" / "downloaded", no progress bars, no absl warnings."""
    options = dict(num_train=16, num_validation=8, num_test=8)
    prepare("shapes_captions", tmp_path, **options)
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("jaxalign: generating"), lines
    assert lines[1].startswith("jaxalign: generated shapes_captions in"), lines
    assert "download" not in (out + err).lower()
    prepare("shapes_captions", tmp_path, **options)  # already built: silent
    assert capfd.readouterr() == ("", "")


def test_registry_lists_both_datasets():
    assert set(BUILTIN) == set(NAMES)


def test_unknown_dataset_name_is_a_value_error_naming_the_choices(tmp_path: Path):
    with pytest.raises(ValueError, match=r"'imagenet'.*digits_domains.*shapes_captions"):
        prepare("imagenet", tmp_path)
    with pytest.raises(ValueError, match=r"imagesize.*image_size"):
        prepare("shapes_captions", tmp_path, imagesize=32)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_two_builds_are_byte_identical(built: Path, rebuilt: Path):
    """Every file of both builds, array_record data and metadata alike, is byte-identical.

    With tfds 4.9.10 the metadata files (dataset_info.json, features.json, *.labels.txt,
    .config/metadata.json) hold no volatile field (no timestamp, no absolute path, no download
    date for datasets without downloads), so no field is removed before comparing.
    """
    for name in NAMES:
        files_a = sorted(p.relative_to(built) for p in (built / name).rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(rebuilt) for p in (rebuilt / name).rglob("*") if p.is_file())
        assert files_a == files_b
        assert sum(".array_record-" in p.name for p in files_a) == (9 if name == NAMES[1] else 6)
        for rel in files_a:
            assert (built / rel).read_bytes() == (rebuilt / rel).read_bytes(), rel


def test_shapes_captions_reads_back_consistently(built: Path):
    source = tfds.data_source("shapes_captions", data_dir=built)
    assert {split: len(ds) for split, ds in source.items()} == SHAPES_COUNTS
    builder = tfds.builder_from_directory(str(built / "shapes_captions" / "default" / "3.1.0"))
    class_names = builder.info.features["label"].names
    assert class_names == list(sc.CLASS_NAMES)
    for split, ds in source.items():
        for i in range(len(ds)):
            ex = ds[i]
            image, caption = ex["image"], ex["caption"].decode()
            assert image.shape == (64, 64, 3) and image.dtype == np.uint8
            assert image.std() > 0, (split, i)  # not a blank canvas
            assert ex["index"] == i  # records are in index order
            colour, shape = sc.COLOUR_NAMES[ex["colour"]], sc.SHAPES[ex["shape"]]
            count, position = int(ex["count"]), sc.POSITIONS[ex["position"]]
            words = caption.split()
            assert colour in words and sc.SIZES[ex["size"]] in words, caption
            assert (shape if count == 1 else f"{shape}s") in words, caption
            assert set(sc.COUNT_WORDS[count]) & set(words), caption
            assert caption.endswith(f" the {position}"), caption
            assert set(words) <= set(sc.VOCABULARY), caption
            assert class_names[ex["label"]] == f"{colour} {shape}"


def test_shapes_test_combos_are_held_out_of_training(built: Path):
    skip_images = {"image": tfds.decode.SkipDecoding()}
    source = tfds.data_source("shapes_captions", data_dir=built, decoders=skip_images)

    def combos(split: str) -> set[tuple[str, str]]:
        ds = source[split]
        return {
            (sc.COLOUR_NAMES[ds[i]["colour"]], sc.SHAPES[ds[i]["shape"]]) for i in range(len(ds))
        }

    train, validation, test = combos("train"), combos("validation"), combos("test")
    assert train == set(sc.TRAIN_COMBOS)  # every allowed pair shows up in 4096 draws
    assert validation <= set(sc.TRAIN_COMBOS)
    assert test == set(sc.HELD_OUT_COMBOS) == combos("heldout_validation")
    captions = [source["test"][i]["caption"] for i in range(64)]
    assert captions != [source["heldout_validation"][i]["caption"] for i in range(64)]  # own scenes
    assert not test & (train | validation)
    # Compositional, not new words: each held-out colour and shape is seen in training.
    assert {c for c, _ in test} <= {c for c, _ in train}
    assert {s for _, s in test} <= {s for _, s in train}


def test_shapes_examples_do_not_depend_on_generation_order(built: Path):
    ds = tfds.data_source("shapes_captions", data_dir=built)["validation"]
    for index in (511, 7, 300):
        ex = sc.make_example(seed=0, split="validation", index=index, image_size=64)
        np.testing.assert_array_equal(_png(ex["image"]), ds[index]["image"])
        assert ex["caption"] == ds[index]["caption"].decode()


def test_outline_domain_draws_the_test_scenes_as_outlines(built: Path):
    source = tfds.data_source("shapes_captions", data_dir=built)
    test, outline = source["test"], source["outline_test"]
    for i in range(0, len(test), 37):
        a, b = test[i], outline[i]
        for key in ("caption", "label", "colour", "shape", "position", "index"):
            assert a[key] == b[key], key  # the same scene
        assert b["image"].shape == a["image"].shape
        # Filled shapes on a flat background vs outlines on stripes and noise: busier images.
        assert (
            np.abs(np.diff(b["image"].astype(int), axis=1)).mean()
            > 3 * np.abs(np.diff(a["image"].astype(int), axis=1)).mean()
        )
    held_out = {f"{c} {s}" for c, s in sc.HELD_OUT_COMBOS}
    train_names = {sc.CLASS_NAMES[source["outline_train"][i]["label"]] for i in range(0, 2048, 7)}
    assert train_names and not train_names & held_out  # the target stream: training pairs only
    assert source["outline_train"][0]["caption"] != source["train"][0]["caption"]  # own scenes


def test_digits_domains_reads_back_consistently(built: Path):
    source = tfds.data_source("digits_domains", data_dir=built)
    images, labels = dd.load_digits()
    parts = dd.split_indices(labels, seed=0)
    assert set(source) == set(dd.SPLITS)
    assert set(dd.SPLITS) == {f"{d}_{p}" for d in dd.DOMAINS for p in dd.PARTS}
    every = np.sort(np.concatenate(list(parts.values())))
    np.testing.assert_array_equal(every, np.arange(len(labels)))  # a partition of the digits
    gaps: dict[str, list[float]] = {"blend": [], "rotated": []}  # mean |source - other|
    for part in dd.PARTS:
        src = source[f"source_{part}"]
        assert len(src) == len(parts[part])
        assert abs(len(src) / len(labels) - dd.FRACTIONS[part]) < 0.01
        for domain, gap in gaps.items():
            other = source[f"{domain}_{part}"]
            assert len(other) == len(src)
            for i in range(0, len(src), 7):
                s, t = src[i], other[i]
                index = int(parts[part][i])
                assert s["digit_index"] == t["digit_index"] == index
                assert s["label"] == t["label"] == labels[index]
                assert (s["domain"], t["domain"]) == (0, dd.DOMAINS.index(domain))
                for image in (s["image"], t["image"]):
                    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
                np.testing.assert_array_equal(s["image"], dd.source_image(images[index], 32))
                assert not np.array_equal(s["image"], t["image"])
                gap.append(np.abs(s["image"].astype(int) - t["image"].astype(int)).mean())
    assert np.mean(gaps["blend"]) > 40  # the photo backgrounds change the images a lot
    assert np.mean(gaps["rotated"]) > 20  # turned strokes and noise
    train_test = set(parts["train"].tolist()) & set(parts["test"].tolist())
    assert not train_test  # no *_test split holds a digit of a *_train split


def test_rotated_domain_is_the_turned_noisy_source_digit():
    images, _ = dd.load_digits()
    digit = dd.source_image(images[5], 32)
    out = dd.rotate_and_add_noise(np.random.default_rng([0, 5, 2]), digit)
    again = dd.rotate_and_add_noise(np.random.default_rng([0, 5, 2]), digit)
    np.testing.assert_array_equal(out, again)
    assert out.shape == digit.shape and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 2])  # grey: the noise is the same per channel
    # With no noise and no turn it would be the digit: the residual is the noise's size.
    rng = np.random.default_rng([0, 5, 2])
    angle = rng.uniform(-dd.ROTATION_DEGREES, dd.ROTATION_DEGREES)
    turned = np.asarray(PIL.Image.fromarray(digit).rotate(angle, resample=2), dtype=float)
    residual = out.astype(float) - turned
    inside = (turned > 60) & (turned < 190)  # where clipping cannot bite
    assert 0.6 * dd.NOISE_STD < residual[inside].std() < 1.4 * dd.NOISE_STD


def test_caption_corpus_is_the_training_captions(built: Path):
    corpus = caption_corpus(built)
    train = tfds.data_source("shapes_captions", data_dir=built)["train"]
    assert len(corpus) == SHAPES_COUNTS["train"]
    assert all(isinstance(c, str) and c for c in corpus)
    assert corpus[:50] == [train[i]["caption"].decode() for i in range(50)]
    assert corpus[-1] == train[len(train) - 1]["caption"].decode()


def test_tokenizer_loads_offline_and_covers_the_captions(built: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    path = build_caption_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tokenizer.pad_token_id == 0
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(6))
    assert tokenizer.mask_token == "[MASK]" and tokenizer.eos_token == "<|endoftext|>"
    captions = sorted(set(caption_corpus(built)))
    encoded = tokenizer(captions)["input_ids"]
    for caption, ids in zip(captions, encoded, strict=True):
        assert tokenizer.unk_token_id not in ids, caption
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == caption
    assert tokenizer("a purple blob")["input_ids"][3] == tokenizer.unk_token_id


def test_the_tokenizer_reads_without_transformers_as_with_it(built: Path, tmp_path: Path):
    """``load_caption_tokenizer`` (the tokenizers library alone, what the CLIP task reads)
    encodes every caption as transformers' tokenizer of the same directory does; a current
    directory is not written again, a stale one is; a missing one is named."""
    from jaxalign.data.tokenizer import TextTokenizer
    from jaxalign.errors import MissingDataError
    from jaxalign.interop import hf

    path = build_caption_tokenizer(tmp_path)
    plain = TextTokenizer(load_caption_tokenizer(tmp_path), 12, pad_id=0)
    with_transformers = TextTokenizer(hf.load_tokenizer(path), 12)
    captions = [*sorted(set(caption_corpus(built)))[:200], "A purple BLOB, left of it!", ""]
    for caption in captions:
        for a, b in zip(plain(caption), with_transformers(caption), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=caption)

    os.utime(path / "tokenizer.json", ns=(0, 0))
    build_caption_tokenizer(tmp_path)
    assert (path / "tokenizer.json").stat().st_mtime_ns == 0  # current: left alone
    (path / TOKENIZER_STAMP).write_text("another definition")
    build_caption_tokenizer(tmp_path)
    assert (path / "tokenizer.json").stat().st_mtime_ns > 0  # stale: written again
    assert (path / TOKENIZER_STAMP).read_text() != "another definition"
    with pytest.raises(MissingDataError, match=r"no built-in caption tokenizer at .*nowhere"):
        load_caption_tokenizer(tmp_path / "nowhere")


def test_options_build_a_separate_variant(tmp_path: Path):
    builder = prepare(
        "shapes_captions", tmp_path, image_size=32, num_train=16, num_validation=4, num_test=4
    )
    name = builder.builder_config.name
    assert name != "default"
    source = tfds.data_source(f"shapes_captions/{name}", data_dir=tmp_path)
    assert {split: len(ds) for split, ds in source.items()} == {
        "train": 16,
        "validation": 4,
        "test": 4,
        "outline_train": 8,
        "outline_test": 4,
        "heldout_validation": 4,
    }
    assert source["train"][0]["image"].shape == (32, 32, 3)
    assert (
        prepare(
            "shapes_captions", tmp_path, num_train=16, num_validation=4, num_test=4, image_size=32
        ).data_dir
        == builder.data_dir
    )  # reused, not rebuilt
