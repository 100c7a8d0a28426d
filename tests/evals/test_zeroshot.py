"""Zero-shot classification: accuracy against a brute-force reference, known answers, prompt
ensembling with a fake text encoder, and one end-to-end run (zero-shot + retrieval) of a randomly
initialised tiny dual encoder on a tiny shapes_captions."""

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxalign import models
from jaxalign.evals import (
    class_text_embeddings,
    embed_dataset,
    retrieval_recall,
    zeroshot_accuracy,
)


def _reference_accuracy(images, labels, classes, k):
    """Sort each row's class scores, wrong classes first among ties; is the label in the top k?"""
    scores = images.astype(np.float64) @ classes.astype(np.float64).T
    hits = []
    for row, label in zip(scores, labels, strict=True):
        is_label = (np.arange(classes.shape[0]) == label).astype(int)
        order = np.lexsort((is_label, -row))
        hits.append(is_label[order[:k]].any())
    return float(np.mean(hits))


@pytest.mark.parametrize("n, num_classes, dim, block", [(9, 3, 4, 4), (200, 30, 8, 64)])
def test_matches_brute_force_reference(n, num_classes, dim, block):
    rng = np.random.default_rng([n, num_classes])
    images = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)  # exact scores, many ties
    classes = rng.integers(-2, 3, size=(num_classes, dim)).astype(np.float32)
    labels = rng.integers(num_classes, size=n)
    got = zeroshot_accuracy(images, labels, classes, ks=(1, 2, 5), block_size=block)
    expected = {
        f"zeroshot_top{k}": _reference_accuracy(images, labels, classes, k)
        for k in (1, 2, 5)
        if k <= num_classes
    }
    assert got == {**expected, "zeroshot_chance": 1.0 / num_classes}
    assert ("zeroshot_top5" in got) == (num_classes >= 5)


def test_known_answers():
    classes = np.eye(6, dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1])
    assert zeroshot_accuracy(classes[labels], labels, classes) == {
        "zeroshot_top1": 1.0,
        "zeroshot_top5": 1.0,
        "zeroshot_chance": pytest.approx(1 / 6),
    }
    # Each image points at the next class: its own class ties (at 0) with 4 others -> counted
    # as ranked last (6th), so even top-5 is 0.
    shifted = classes[(labels + 1) % 6]
    got = zeroshot_accuracy(shifted, labels, classes)
    assert got["zeroshot_top1"] == got["zeroshot_top5"] == 0.0
    # Image 0 prefers class 1 but likes class 0 second best: top-1 misses, top-2 hits.
    images = np.array([[0.5, 1.0, 0, 0, 0, 0]], np.float32)
    got = zeroshot_accuracy(images, [0], classes, ks=(1, 2))
    assert got["zeroshot_top1"] == 0.0 and got["zeroshot_top2"] == 1.0


def test_bad_labels_are_named():
    classes = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        zeroshot_accuracy(classes, [0, 1, 3], classes)
    with pytest.raises(ValueError, match=r"labels must be \[3\] integers"):
        zeroshot_accuracy(classes, [0, 1], classes)


class _FakeText:
    """A word-level tokenizer and a bag-of-words text encoder with non-unit outputs."""

    def __init__(self, dim=5, length=8):
        self.vocab: dict[str, int] = {}
        self.length = length
        self.table = np.random.default_rng(0).normal(size=(64, dim)) + 0.3
        self.calls: list[int] = []

    def tokenize(self, texts):
        ids = np.zeros((len(texts), self.length), np.int32)
        for i, text in enumerate(texts):
            words = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]
            ids[i, : len(words)] = words
        return ids, (ids > 0).astype(np.int32)

    def encode(self, ids, mask):
        self.calls.append(ids.shape[0])
        return (self.table[ids] * mask[..., None]).sum(1), {"unused": None}

    def one(self, text):
        ids, mask = self.tokenize([text])
        return self.encode(ids, mask)[0][0]


def test_class_text_embeddings_average_then_renormalise():
    fake = _FakeText()
    names = ["red circle", "blue square", "green star"]
    templates = ["a {}", "two {} here", "a big {} at the top"]
    got = class_text_embeddings(fake.encode, fake.tokenize, names, templates, batch_size=4)
    # 9 prompts in chunks of 4, 4, 1 padded to 4: every call has the same batch size.
    assert fake.calls == [4, 4, 4]
    assert got.shape == (3, 5) and got.dtype == np.float32
    for c, name in enumerate(names):
        prompts = [fake.one(t.format(name)) for t in templates]
        mean = np.mean([p / np.linalg.norm(p) for p in prompts], axis=0)
        np.testing.assert_allclose(got[c], mean / np.linalg.norm(mean), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    # One template: just the normalised prompt embedding.
    single = class_text_embeddings(fake.encode, fake.tokenize, names, ["a {}"])
    expected = fake.one("a green star")
    np.testing.assert_allclose(single[2], expected / np.linalg.norm(expected), rtol=1e-6)


def test_templates_need_one_placeholder():
    fake = _FakeText()
    with pytest.raises(ValueError, match="exactly one"):
        class_text_embeddings(fake.encode, fake.tokenize, ["x"], ["no placeholder"])


@dataclasses.dataclass(frozen=True)
class _WithLabel:
    """ImageTextTransform (eval mode) plus the record's label."""

    inner: object

    def __call__(self, record, key):
        out = self.inner(record, key)
        out["label"] = np.asarray(record["label"], np.int32)
        return out


def _random_variables(model, image_size, length):
    """Random parameters drawn with NumPy (compiling ``model.init`` takes ~10 s on 2 cores):
    normal(0, 0.05) weights, LayerNorm scales 1, biases 0."""
    images = np.zeros((1, image_size, image_size, 3), np.float32)
    ids = np.zeros((1, length), np.int32)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images, ids))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return np.ones(leaf.shape, leaf.dtype)
        if name.endswith("['bias']"):
            return np.zeros(leaf.shape, leaf.dtype)
        return rng.normal(0.0, 0.05, leaf.shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_end_to_end_on_tiny_shapes_captions(tmp_path: Path):
    from jaxalign.data import ImageTextTransform, TextTokenizer, make_pipeline, tfds_source
    from jaxalign.data.builtin import build_caption_tokenizer, prepare, shapes_captions
    from jaxalign.parallel import make_mesh

    builder = prepare(
        "shapes_captions", tmp_path, image_size=32, num_train=1, num_validation=20, num_test=1
    )
    source = tfds_source(f"shapes_captions/{builder.builder_config.name}", tmp_path, "validation")
    hf = AutoTokenizer.from_pretrained(
        str(build_caption_tokenizer(tmp_path)), local_files_only=True
    )
    tokenizer = TextTokenizer(hf, 16)
    transform = _WithLabel(ImageTextTransform(32, tokenizer, train=False))
    pipeline = make_pipeline(
        source,
        seed=0,
        global_batch_size=8,
        transform=transform,
        num_epochs=1,
        drop_remainder=False,
        prefetch=0,
    )

    model = models.build("tiny")  # learned positions: initialised at 32x32, 4x4 patches of 8
    variables = _random_variables(model, image_size=32, length=16)

    def embed(variables, batch):
        image, _ = model.apply(variables, batch["image"], method=model.encode_image)
        text, _ = model.apply(variables, batch["ids"], batch["mask"], method=model.encode_text)
        return {"image": image, "text": text}

    mesh = make_mesh({"data": -1})
    out = embed_dataset(
        embed, pipeline, mesh, global_batch_size=8, keep=("label",), params=variables
    )
    assert out["image"].shape == out["text"].shape == (20, 128)
    assert sorted(out["label"]) == sorted(source[i]["label"] for i in range(20))

    @jax.jit
    def encode_text(ids, mask):
        return model.apply(variables, ids, mask, method=model.encode_text)

    names = shapes_captions.CLASS_NAMES
    classes = class_text_embeddings(
        encode_text, tokenizer.encode_batch, names, ["a {}", "there is a small {}"], batch_size=32
    )
    assert classes.shape == (30, 128)
    metrics = {
        **zeroshot_accuracy(out["image"], out["label"], classes),
        **retrieval_recall(out["image"], out["text"]),
    }
    assert set(metrics) == {
        "zeroshot_top1",
        "zeroshot_top5",
        "zeroshot_chance",
        *(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)),
    }
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    assert metrics["zeroshot_chance"] == pytest.approx(1 / 30)
