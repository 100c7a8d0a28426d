"""Retrieval recall against a brute-force NumPy reference (integer embeddings: exact scores and
many ties), hand-made cases with known answers, block-size independence and bounded blocks."""

import numpy as np
import pytest

from jaxalign.evals import first_match_rank, retrieval_recall
from jaxalign.evals import retrieval as retrieval_lib


def _reference_recall(images, texts, text_to_image, ks):
    """Full score matrix; each row sorted by score, non-matching items first among ties."""
    scores = images.astype(np.float64) @ texts.astype(np.float64).T  # [n_img, n_txt]
    n_img, n_txt = scores.shape
    out = {}
    for k in ks:
        hits = []
        for i in range(n_img):
            match = (text_to_image == i).astype(int)
            order = np.lexsort((match, -scores[i]))  # primary: score desc; ties: wrong first
            hits.append(match[order[:k]].any())
        out[f"i2t_R@{k}"] = float(np.mean(hits))
    for k in ks:
        hits = []
        for j in range(n_txt):
            match = (np.arange(n_img) == text_to_image[j]).astype(int)
            order = np.lexsort((match, -scores[:, j]))
            hits.append(match[order[:k]].any())
        out[f"t2i_R@{k}"] = float(np.mean(hits))
    return out


def _captions(rng, n_img, max_per_image):
    """A shuffled text_to_image where every image has 1..max_per_image captions."""
    counts = rng.integers(1, max_per_image + 1, size=n_img)
    owners = np.repeat(np.arange(n_img), counts)
    return rng.permutation(owners)


@pytest.mark.parametrize(
    "n_img, per_image, dim, block",
    [(7, 1, 4, 3), (50, 5, 16, 16), (130, 1, 8, 32), (33, 3, 6, 1024)],
)
def test_matches_brute_force_reference(n_img, per_image, dim, block):
    rng = np.random.default_rng([n_img, per_image, dim])
    text_to_image = _captions(rng, n_img, per_image)
    # Small integers: scores are exact in float32, and ties are frequent.
    images = rng.integers(-2, 3, size=(n_img, dim)).astype(np.float32)
    texts = rng.integers(-2, 3, size=(text_to_image.size, dim)).astype(np.float32)
    ks = (1, 2, 5, 10)
    got = retrieval_recall(images, texts, text_to_image, ks, block_size=block)
    assert got == _reference_recall(images, texts, text_to_image, ks)


def test_random_unit_embeddings_match_reference():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(90, 12)).astype(np.float32)
    texts = (images + 1.5 * rng.normal(size=images.shape)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    got = retrieval_recall(images, texts, ks=(1, 5, 10), block_size=32)
    assert got == _reference_recall(images, texts, np.arange(90), (1, 5, 10))
    assert 0 < got["i2t_R@1"] < got["i2t_R@10"] < 1


def test_identity_embeddings_give_perfect_recall():
    eye = np.eye(12, dtype=np.float32)
    got = retrieval_recall(eye, eye, ks=(1, 5))
    assert got == {"i2t_R@1": 1.0, "i2t_R@5": 1.0, "t2i_R@1": 1.0, "t2i_R@5": 1.0}


def test_permutation_recall_counts_fixed_points_and_ties_against_the_match():
    n = 10
    perm = np.array([0, 1, 2, 4, 3, 6, 7, 5, 9, 8])  # 3 fixed points
    eye = np.eye(n, dtype=np.float32)
    texts = eye[perm]  # text j points at image perm[j]; it belongs to image j
    got = retrieval_recall(eye, texts, ks=(1, 5, 9, 10))
    # A moved text scores 0 with its own image, tied with n - 2 other images (and below one):
    # pessimistic ties put the match last, so it is found only at k = n.
    for direction in ("i2t", "t2i"):
        assert got[f"{direction}_R@1"] == pytest.approx(0.3)
        assert got[f"{direction}_R@5"] == pytest.approx(0.3)
        assert got[f"{direction}_R@9"] == pytest.approx(0.3)
        assert got[f"{direction}_R@10"] == 1.0


def test_all_ties_never_over_report():
    same = np.ones((6, 3), np.float32)
    got = retrieval_recall(same, same, ks=(1, 5, 6))
    assert got["i2t_R@1"] == got["t2i_R@1"] == 0.0
    assert got["i2t_R@5"] == got["t2i_R@5"] == 0.0
    assert got["i2t_R@6"] == got["t2i_R@6"] == 1.0


def test_one_good_caption_of_several_is_enough_for_image_to_text():
    images = np.eye(3, dtype=np.float32)
    # image 0 has a wrong caption (pointing at image 1) and a right one; images 1 and 2 one each.
    texts = np.array([[0, 0.5, 0], [1, 0, 0], [0, 0.9, 0], [0, 0, 1]], np.float32)
    text_to_image = np.array([0, 0, 1, 2])
    got = retrieval_recall(images, texts, text_to_image, ks=(1, 2, 3))
    assert got["i2t_R@1"] == 1.0
    # text 0 (of image 0) is closest to image 1 and ties (at 0) between images 0 and 2: the tie
    # goes against its image, so it is found only at k = 3; the other texts find their image.
    assert got["t2i_R@1"] == got["t2i_R@2"] == 0.75
    assert got["t2i_R@3"] == 1.0


def test_first_match_rank_is_pessimistic_and_block_independent():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    keys = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], np.float32)
    targets = np.array([0, 2, 5])
    key_targets = np.array([0, 1, 2, 3])
    for block in (1, 2, 3, 100):
        ranks = first_match_rank(queries, keys, targets, key_targets, block_size=block)
        # query 0: its key ties with key 1 and loses to key 3 -> 2; query 1: loses to key 3 -> 1;
        # query 2 has no matching key -> all 4 keys.
        np.testing.assert_array_equal(ranks, [2, 1, 4])


def test_blocks_bound_the_scored_rows(monkeypatch):
    calls = []
    original = retrieval_lib._block_ranks

    def spy(queries, keys, query_targets, key_targets):
        calls.append((queries.shape, keys.shape))
        return original(queries, keys, query_targets, key_targets)

    monkeypatch.setattr(retrieval_lib, "_block_ranks", spy)
    rng = np.random.default_rng(1)
    images, texts = rng.normal(size=(2, 70, 4)).astype(np.float32)
    retrieval_recall(images, texts, block_size=16)
    # 70 rows -> 5 blocks of 16 per direction, every block the same shape: [16, n] scores only.
    assert calls == [((16, 4), (70, 4))] * 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(text_to_image=np.array([0, 0, 1, 1])), "have no caption"),
        (dict(text_to_image=np.array([0, 1, 2, 3])), r"must lie in \[0, 3\)"),
        (dict(text_to_image=np.array([0.0, 1.0, 2.0, 2.0])), "integers"),
        (dict(ks=(0,)), "positive ints"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    images, texts = np.eye(3, dtype=np.float32), np.eye(4, 3, dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        retrieval_recall(images, texts, **kwargs)


def test_bad_embeddings_are_named():
    eye = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="pass text_to_image"):
        retrieval_recall(eye, np.eye(4, 3, dtype=np.float32))
    with pytest.raises(ValueError, match="differ in dim"):
        retrieval_recall(eye, np.eye(3, 4, dtype=np.float32))
    nan = eye.copy()
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="text_embeddings holds 1 non-finite"):
        retrieval_recall(eye, nan)
