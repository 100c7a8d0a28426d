"""Sources: webdataset shards (with planted bad samples), image folders, TFDS on local disk.

Data are generated in tmp dirs. ``write_shard`` / ``image_bytes`` / ``PLANTED`` are also used by
the pipeline tests.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from jaxalign.data import sources, transforms
from jaxalign.data.sources import ImageFolderSource, WebDatasetSource, tfds_source


def image_bytes(
    seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB", fmt: str = "JPEG"
) -> bytes:
    """A random image (``size`` = (width, height)) encoded in ``fmt``."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.uniform(size=(size[1], size[0])) < 0.5, 0, 255)
    image = Image.fromarray(rgba, "RGBA")
    image = image.convert(mode) if mode != "RGBA" else image
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """``samples``: ``(key, {ext: bytes})`` written as ``key.ext`` tar members, in order."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def good_samples(start: int, count: int) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (f"{i:06d}", {"jpg": image_bytes(i), "txt": f"a photo number {i}".encode()})
        for i in range(start, start + count)
    ]


# key -> (members, expected skip reason or None). Odd modes and sizes are converted, not skipped.
PLANTED: dict[str, tuple[dict[str, bytes], str | None]] = {
    "bad_truncated": ({"jpg": image_bytes(1)[:150], "txt": b"cut off"}, "corrupt_image"),
    "bad_garbage": ({"png": b"\x89PNG not really", "txt": b"noise"}, "corrupt_image"),
    "bad_empty_caption": ({"jpg": image_bytes(2), "txt": b"   \n"}, "empty_caption"),
    "bad_no_caption": ({"jpg": image_bytes(3)}, "missing_caption"),
    "bad_no_image": ({"txt": b"caption without image"}, "missing_image"),
    "bad_json_no_caption": ({"jpg": image_bytes(4), "json": b'{"url": "x"}'}, "missing_caption"),
    "odd_gray": ({"jpg": image_bytes(5, mode="L"), "txt": b"gray"}, None),
    "odd_cmyk": ({"jpg": image_bytes(6, mode="CMYK"), "txt": b"cmyk"}, None),
    "odd_rgba": ({"png": image_bytes(7, mode="RGBA", fmt="PNG"), "txt": b"rgba"}, None),
    "odd_palette": ({"png": image_bytes(8, mode="P", fmt="PNG"), "txt": b"palette"}, None),
    "odd_tiny": ({"jpeg": image_bytes(9, size=(1, 3)), "txt": b"tiny"}, None),
    "odd_wide": ({"webp": image_bytes(10, size=(517, 3), fmt="WEBP"), "txt": b"wide"}, None),
    "odd_json": ({"jpg": image_bytes(11), "json": b'{"caption": "from json"}'}, None),
}


def planted_shards(tmp_path) -> list[str]:
    """Two shards: 10 good samples, the planted ones, 10 more good ones."""
    planted = [(key, members) for key, (members, _) in PLANTED.items()]
    first, second = str(tmp_path / "shard-000000.tar"), str(tmp_path / "shard-000001.tar")
    write_shard(first, good_samples(0, 10) + planted[:6])
    write_shard(second, planted[6:] + good_samples(10, 10))
    return [first, second]


def expected_skips() -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in PLANTED.values():
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# webdataset


def test_webdataset_source_indexes_samples_in_webdataset_order(tmp_path):
    import webdataset as wds

    shards = planted_shards(tmp_path)
    source = WebDatasetSource(shards)
    assert len(source) == 20 + len(PLANTED)
    reference = wds.WebDataset(shards, shardshuffle=False, empty_check=False)
    ref_keys = [sample["__key__"] for sample in reference]
    assert [source[i]["__key__"] for i in range(len(source))] == ref_keys
    # Random access in any order reads the same bytes as the reference loop.
    ref = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)}
    for i in np.random.default_rng(0).permutation(len(source)):
        record = source[int(i)]
        members = ref[record["__key__"]]
        image_ext = next((e for e in sources.IMAGE_EXTENSIONS if e in members), None)
        assert record["image"] == (members[image_ext] if image_ext else None)


def test_webdataset_source_fields_and_flags(tmp_path):
    source = WebDatasetSource(planted_shards(tmp_path))
    by_key = {source[i]["__key__"]: source[i] for i in range(len(source))}
    assert by_key["000003"]["caption"] == "a photo number 3"
    assert by_key["000003"]["__url__"].endswith("shard-000000.tar")
    assert by_key["odd_json"]["caption"] == "from json"
    assert by_key["bad_no_image"][transforms.SKIP_FIELD] == "missing_image"
    assert by_key["bad_no_caption"][transforms.SKIP_FIELD] == "missing_caption"
    assert by_key["bad_json_no_caption"][transforms.SKIP_FIELD] == "missing_caption"
    assert transforms.SKIP_FIELD not in by_key["bad_truncated"]  # found by the decoder later
    assert by_key["bad_empty_caption"]["caption"].strip() == ""
    image_only = WebDatasetSource(source.shard_paths, require_caption=False)
    assert transforms.SKIP_FIELD not in image_only[by_key_index(source, "bad_no_caption")]


def by_key_index(source, key: str) -> int:
    return next(i for i in range(len(source)) if source[i]["__key__"] == key)


def test_planted_shard_transformed_to_the_end_with_right_skip_counts(tmp_path):
    source = WebDatasetSource(planted_shards(tmp_path))
    transform = transforms.ImageTextTransform(8, whitespace_tokenizer(), normalize=False)
    counts: dict[str, int] = {}
    kept = []
    for i in range(len(source)):
        record = source[i]
        out = (
            transforms.Skip(record[transforms.SKIP_FIELD])
            if record.get(transforms.SKIP_FIELD)
            else transform(record, transforms.ExampleKey(0, 0, i))
        )
        if isinstance(out, transforms.Skip):
            counts[out.reason] = counts.get(out.reason, 0) + 1
            assert PLANTED[record["__key__"]][1] == out.reason
        else:
            assert out["image"].shape == (8, 8, 3) and out["image"].dtype == np.uint8
            kept.append(record["__key__"])
    assert counts == expected_skips()
    assert {k for k in kept if k.startswith("odd_")} == {k for k in PLANTED if k.startswith("odd_")}
    assert len(kept) == 20 + sum(1 for _, reason in PLANTED.values() if reason is None)


def test_webdataset_source_pickles_and_expands_braces(tmp_path):
    planted_shards(tmp_path)
    source = WebDatasetSource(str(tmp_path / "shard-{000000..000001}.tar"))
    assert len(source.shard_paths) == 2
    copy = pickle.loads(pickle.dumps(source))
    assert len(copy) == len(source)
    assert copy[7] == source[7]
    assert WebDatasetSource(str(tmp_path / "shard-*.tar")).shard_paths == source.shard_paths
    with pytest.raises(IndexError):
        source[len(source)]


def test_webdataset_source_errors_name_the_shard(tmp_path):
    missing = tmp_path / "nope.tar"
    with pytest.raises(FileNotFoundError, match=r"nope\.tar"):
        WebDatasetSource([missing])
    with pytest.raises(ValueError, match="no shards"):
        WebDatasetSource(str(tmp_path / "none-*.tar"))
    plain = tmp_path / "plain.tar"
    write_shard(plain, good_samples(0, 2))
    compressed = tmp_path / "packed.tar.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(ValueError, match=r"packed\.tar\.gz"):
        WebDatasetSource([compressed])


# ---------------------------------------------------------------------------------------------
# image folder


def _image_folder(tmp_path):
    for i in range(3):
        (tmp_path / f"img{i}.jpg").write_bytes(image_bytes(i))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "gray.png").write_bytes(image_bytes(9, mode="L", fmt="PNG"))
    rows = [("img0.jpg", "first"), ("img1.jpg", 'with, comma "quoted"'), ("sub/gray.png", "gray")]
    rows += [("gone.jpg", "missing file"), ("img2.jpg", "")]
    return rows


def test_image_folder_csv_and_jsonl(tmp_path):
    import csv

    rows = _image_folder(tmp_path)
    with open(tmp_path / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text("\n".join(json.dumps({"file": f, "caption": c}) for f, c in rows) + "\n")
    for source in (ImageFolderSource(tmp_path), ImageFolderSource(tmp_path, jsonl)):
        assert len(source) == 5
        assert source[1]["caption"] == 'with, comma "quoted"'
        assert source[0]["image"] == (tmp_path / "img0.jpg").read_bytes()
        assert source[2]["__key__"] == "sub/gray.png"
        assert source[3][transforms.SKIP_FIELD] == "missing_image"
        out = transforms.ImageTransform(4, train=False)(source[4], transforms.ExampleKey(0, 0, 4))
        assert out["image"].shape == (4, 4, 3)
        text = transforms.ImageTextTransform(4, whitespace_tokenizer(), train=False)
        assert text(source[4], transforms.ExampleKey(0, 0, 4)) == transforms.Skip("empty_caption")
        assert pickle.loads(pickle.dumps(source))[2] == source[2]


def whitespace_tokenizer() -> transforms.TextTokenizer:
    """Word-level tokenizer with only [PAD] and [UNK]: 6 ids per caption."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transforms.TextTokenizer(tokenizer, 6)


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        ImageFolderSource(tmp_path / "no_such_root")
    with pytest.raises(FileNotFoundError, match=r"captions\.csv"):
        ImageFolderSource(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"other\.csv"):
        ImageFolderSource(tmp_path, tmp_path / "other.csv")
    (tmp_path / "bad.csv").write_text("path,text\na.jpg,x\n")
    with pytest.raises(ValueError, match="'file' and 'caption'"):
        ImageFolderSource(tmp_path, tmp_path / "bad.csv")


# ---------------------------------------------------------------------------------------------
# TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A tiny array_record TFDS dataset (6 train / 2 test examples) built in a tmp dir."""
    import tensorflow_datasets as tfds

    class JaxalignSourcesTestDs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        # tfds looks for checksums beside the builder's code via importlib_resources, which is
        # not installed; a builder defined in a test needs none.
        code_path = None

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "caption": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            )
            return self.dataset_info_from_configs(features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 6), "test": self._generate_examples(6, 2)}

        def _generate_examples(self, start, count):
            for i in range(start, start + count):
                png = image_bytes(i, size=(5 + i, 4), fmt="PNG")
                yield i, {"image": png, "caption": f"example {i}", "label": i % 3}

    data_dir = tmp_path_factory.mktemp("tfds")
    JaxalignSourcesTestDs(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_source_reads_prepared_dataset(tfds_dir):
    source = tfds_source("jaxalign_sources_test_ds", tfds_dir, "train")
    assert len(source) == 6
    record = source[2]
    i = int(record["caption"].decode().split()[-1])  # TFDS stores examples in hashed order
    assert record["image"].shape == (4, 5 + i, 3) and record["image"].dtype == np.uint8
    assert int(record["label"]) == i % 3
    assert sorted(source[k]["caption"] for k in range(6)) == [b"example %d" % k for k in range(6)]
    assert len(tfds_source("jaxalign_sources_test_ds:1.0.0", tfds_dir, "train[:50%]+test")) == 5
    raw = tfds_source("jaxalign_sources_test_ds", tfds_dir, "test", decode_images=False)
    assert isinstance(raw[0]["image"], bytes)
    decoded = transforms.decode_image(raw[0]["image"])
    assert decoded.size == (5 + int(raw[0]["caption"].decode().split()[-1]), 4)
    version_dir = tfds_dir / "jaxalign_sources_test_ds" / "1.0.0"
    assert len(tfds_source("jaxalign_sources_test_ds", version_dir, "test")) == 2
    assert len(pickle.loads(pickle.dumps(source))) == 6
    out = transforms.ImageTextTransform(8, whitespace_tokenizer())(
        record, transforms.ExampleKey(0, 0, 2)
    )
    assert out["image"].shape == (8, 8, 3) and out["ids"].shape == (6,)


def test_tfds_source_errors_name_path_name_and_split(tfds_dir, tmp_path):
    missing = tmp_path / "no_tfds_here"
    with pytest.raises(FileNotFoundError, match="no_tfds_here"):
        tfds_source("jaxalign_sources_test_ds", missing, "train")
    with pytest.raises(ValueError, match="no_such_dataset_xyz") as info:
        tfds_source("no_such_dataset_xyz", tfds_dir, "train")
    assert "jaxalign_sources_test_ds" in str(info.value)  # lists what is there
    assert not (tfds_dir / "no_such_dataset_xyz").exists()  # nothing downloaded or generated
    with pytest.raises(ValueError, match="validation"):
        tfds_source("jaxalign_sources_test_ds", tfds_dir, "validation")


def test_per_class_subset_reads_tfds_labels(tfds_dir):
    source = tfds_source("jaxalign_sources_test_ds", tfds_dir, "train", decode_images=False)
    subset = sources.per_class_subset(source, per_class=1, seed=0)
    assert sorted(int(subset[i]["label"]) for i in range(len(subset))) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# per_class_subset


def labelled_records(counts: dict[int, int], seed: int = 0) -> list[dict]:
    """Records ``{"label", "id", "x"}`` with ``counts[c]`` records of class ``c``, shuffled;
    ``id`` names a record across sources built from the same records."""
    labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
    labels = np.random.default_rng(seed).permutation(labels)
    return [
        {"label": int(c), "id": f"r{i}", "x": np.full(2, i, np.float32)}
        for i, c in enumerate(labels)
    ]


COUNTS = {0: 12, 1: 7, 2: 20, 5: 9}  # class 3 and 4 absent


def chosen_ids(subset, label: int) -> list[str]:
    return [subset[i]["id"] for i in range(len(subset)) if subset[i]["label"] == label]


def test_per_class_subset_keeps_exactly_per_class_of_each_class_in_source_order():
    records = labelled_records(COUNTS)
    subset = sources.per_class_subset(records, per_class=5, seed=3)
    assert len(subset) == 5 * len(COUNTS)
    labels = [subset[i]["label"] for i in range(len(subset))]
    assert {c: labels.count(c) for c in set(labels)} == {c: 5 for c in COUNTS}
    assert subset.indices.dtype == np.int64
    assert np.all(np.diff(subset.indices) > 0)  # increasing, no repeats
    for i, index in enumerate(subset.indices):
        assert subset[i] is records[index]
    assert subset[-1] is records[subset.indices[-1]]
    assert repr(subset) == f"Subset({records!r}, 20 of {len(records)} records)"
    assert np.array_equal(pickle.loads(pickle.dumps(subset)).indices, subset.indices)
    # per_class = the smallest class keeps all of it.
    whole = sources.per_class_subset(records, per_class=7, seed=3)
    assert sorted(chosen_ids(whole, 1)) == sorted(r["id"] for r in records if r["label"] == 1)


def test_per_class_subset_choice_is_fixed_by_seed_and_class():
    records = labelled_records(COUNTS)
    first = sources.per_class_subset(records, per_class=4, seed=11)
    again = sources.per_class_subset(records, per_class=4, seed=11)
    np.testing.assert_array_equal(first.indices, again.indices)
    others = [sources.per_class_subset(records, per_class=4, seed=s).indices for s in (12, 13)]
    for other in others:
        assert not np.array_equal(other, first.indices)
        for c in COUNTS:  # every class is redrawn, not only some
            if COUNTS[c] > 4:
                assert chosen_ids(first, c) != [
                    records[i]["id"] for i in other if records[i]["label"] == c
                ]
    # The documented draw: positions among the class's records from default_rng([seed, class]).
    for c, n in COUNTS.items():
        members = [i for i, r in enumerate(records) if r["label"] == c]
        positions = np.random.default_rng([11, c]).choice(n, size=4, replace=False)
        assert chosen_ids(first, c) == [records[members[p]]["id"] for p in sorted(positions)]


def test_per_class_subset_of_a_class_ignores_the_other_classes():
    records = labelled_records(COUNTS)
    full = sources.per_class_subset(records, per_class=6, seed=2)
    # The same class-0 and class-2 records (same relative order), others removed or added.
    only_two = [r for r in records if r["label"] in (0, 2)]
    extra = [{"label": 7, "id": f"e{i}", "x": np.zeros(2, np.float32)} for i in range(10)]
    mixed = list(only_two)
    for k, record in enumerate(extra):  # a new class interleaved, every third position
        mixed.insert(3 * k, record)
    for variant in (only_two, mixed):
        subset = sources.per_class_subset(variant, per_class=6, seed=2)
        for c in (0, 2):
            assert chosen_ids(subset, c) == chosen_ids(full, c)
    assert len(sources.per_class_subset(mixed, per_class=6, seed=2)) == 18


def test_per_class_subset_takes_array_labels_and_other_label_keys():
    records = labelled_records(COUNTS)
    arrays = [{"y": np.array(r["label"], np.int64), "id": r["id"]} for r in records]
    from_arrays = sources.per_class_subset(arrays, per_class=3, seed=1, label_key="y")
    from_ints = sources.per_class_subset(records, per_class=3, seed=1)
    np.testing.assert_array_equal(from_arrays.indices, from_ints.indices)
    scalars = [{"label": np.int32(r["label"]), "id": r["id"]} for r in records]
    from_scalars = sources.per_class_subset(scalars, per_class=3, seed=1)
    np.testing.assert_array_equal(from_scalars.indices, from_ints.indices)


def test_per_class_subset_feeds_the_pipeline():
    from jaxalign.data.pipeline import make_pipeline

    records = labelled_records(COUNTS)
    subset = sources.per_class_subset(records, per_class=2, seed=0)
    pipeline = make_pipeline(
        subset,
        seed=0,
        global_batch_size=4,
        transform=lambda record, key: {"x": record["x"], "label": np.int64(record["label"])},
        process_index=0,
        process_count=1,
        num_epochs=1,
    )
    batches = list(pipeline)
    seen = np.concatenate([b["x"][:, 0] for b in batches]).astype(int)
    assert sorted(seen) == sorted(subset.indices.tolist())
    assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == [
        0,
        0,
        1,
        1,
        2,
        2,
        5,
        5,
    ]


def test_per_class_subset_errors_name_the_problem():
    records = labelled_records(COUNTS)
    with pytest.raises(ValueError, match=r"class 1 has 7 records, fewer than per_class=8"):
        sources.per_class_subset(records, per_class=8, seed=0)
    broken = [*records[:4], {"id": "no label"}, *records[4:]]
    with pytest.raises(ValueError, match=r"record 4 has no label key 'label'"):
        sources.per_class_subset(broken, per_class=2, seed=0)
    with pytest.raises(ValueError, match=r"record 0 has no label key 'target'"):
        sources.per_class_subset(records, per_class=2, seed=0, label_key="target")
    for per_class in (0, -1):
        with pytest.raises(ValueError, match=rf"per_class={per_class} must be >= 1"):
            sources.per_class_subset(records, per_class=per_class, seed=0)
    with pytest.raises(ValueError, match="seed=-1"):
        sources.per_class_subset(records, per_class=1, seed=-1)
    with pytest.raises(ValueError, match="empty"):
        sources.per_class_subset([], per_class=1, seed=0)
    for bad in (np.array([1, 2]), 1.5, -1, "cat"):
        with pytest.raises(ValueError, match=r"record 2's 'label'"):
            sources.per_class_subset(
                [*records[:2], {"label": bad}, *records[2:]], per_class=1, seed=0
            )
