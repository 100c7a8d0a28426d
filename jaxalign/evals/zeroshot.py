"""Zero-shot classification with a dual encoder, as in CLIP (Radford et al., 2021, section 3.1).

Each class becomes a text embedding: its name is put into every prompt template ("a photo of a
{}."), the prompts are encoded, the unit embeddings averaged over templates and the mean
renormalised (prompt ensembling). An image is classified by its most similar class embedding;
top-k accuracy counts an image right when its class is among the ``k`` best scores, with ties
counted against the true class (see :func:`jaxalign.evals.retrieval.first_match_rank`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxalign.evals.retrieval import (
    DEFAULT_BLOCK_SIZE,
    _as_embeddings,
    _as_targets,
    _check_ks,
    first_match_rank,
)

# A few of CLIP's ImageNet prompt templates; datasets with their own vocabulary (e.g. the
# closed caption grammar of shapes_captions) should pass templates their tokenizer covers.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a drawing of a {}.",
    "itap of a {}.",
)

Tokenize = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
EncodeText = Callable[[Any, Any], Any]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """``[..., dim]`` -> rows of norm 1 (float64; a zero row stays zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def class_text_embeddings(
    encode_text_fn: EncodeText,
    tokenize: Tokenize,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """One unit text embedding per class: the renormalised mean over templates.

    Args:
      encode_text_fn: ``(ids [b, L], mask [b, L]) -> [b, dim]`` text embeddings (or a tuple whose
        first element they are, as ``DualEncoder.encode_text`` returns). Always called with
        ``b = batch_size`` (the last chunk is padded by repeating its last prompt), so a jitted
        function compiles once; with a sharded one, ``batch_size`` must divide over its mesh.
      tokenize: ``prompts -> (ids [n, L], mask [n, L])``, e.g. ``TextTokenizer.encode_batch``.
      class_names: the ``C`` class names, in label order.
      templates: the ``T`` prompt templates, each with one ``{}`` for the class name.
      batch_size: prompts encoded per call.

    Returns:
      ``[C, dim]`` float32 unit rows: ``normalize(mean_t(normalize(encode(template_t(c)))))``.
      Each embedding is normalised before averaging (a no-op for unit rows).
    """
    class_names = [str(name) for name in class_names]
    templates = [str(t) for t in templates]
    if not class_names or not templates:
        raise ValueError(
            f"need at least one class name and one template, got {len(class_names)} and "
            f"{len(templates)}"
        )
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"each template needs exactly one '{{}}' for the class name: {bad[0]!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = [t.format(name) for name in class_names for t in templates]  # class-major
    ids, mask = tokenize(prompts)
    ids, mask = np.asarray(ids), np.asarray(mask)
    if ids.shape[0] != len(prompts) or mask.shape != ids.shape:
        raise ValueError(
            f"tokenize gave ids {ids.shape} and mask {mask.shape} for {len(prompts)} prompts"
        )
    chunks = []
    for start in range(0, len(prompts), batch_size):
        chunk_ids, chunk_mask = ids[start : start + batch_size], mask[start : start + batch_size]
        rows = chunk_ids.shape[0]
        if rows < batch_size:  # same shape on every call
            chunk_ids = np.concatenate([chunk_ids, np.repeat(chunk_ids[-1:], batch_size - rows, 0)])
            chunk_mask = np.concatenate(
                [chunk_mask, np.repeat(chunk_mask[-1:], batch_size - rows, 0)]
            )
        out = encode_text_fn(chunk_ids, chunk_mask)
        if isinstance(out, tuple):
            out = out[0]
        chunks.append(np.asarray(out, dtype=np.float64)[:rows])
    embeddings = np.concatenate(chunks).reshape(len(class_names), len(templates), -1)
    return _unit_rows(_unit_rows(embeddings).mean(axis=1)).astype(np.float32)


def zeroshot_accuracy(
    image_embeddings: Any,
    labels: Any,
    class_embeddings: Any,
    ks: Sequence[int] = (1, 5),
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, float]:
    """Top-k zero-shot accuracy of images against class text embeddings.

    Args:
      image_embeddings: ``[n, dim]`` (unit rows).
      labels: ``[n]`` ints in ``[0, C)``.
      class_embeddings: ``[C, dim]``, e.g. from :func:`class_text_embeddings`.
      ks: cut-offs; ``k > C`` is left out (it would be trivially 1).
      block_size: images scored per device call (memory ``O(block_size * C)``).

    Returns:
      ``{"zeroshot_top1": ..., "zeroshot_top5": ..., "zeroshot_chance": 1 / C}`` (Python floats
      in ``[0, 1]``); ties are counted against the true class.
    """
    images = _as_embeddings(image_embeddings, "image_embeddings")
    classes = _as_embeddings(class_embeddings, "class_embeddings")
    ks = _check_ks(ks)
    num_classes = classes.shape[0]
    if images.shape[0] == 0 or num_classes == 0:
        raise ValueError(f"need images and classes, got {images.shape[0]} and {num_classes}")
    if images.shape[1] != classes.shape[1]:
        raise ValueError(
            f"image_embeddings {images.shape} and class_embeddings {classes.shape} differ in dim"
        )
    labels = _as_targets(labels, images.shape[0], num_classes, "labels")
    class_ids = np.arange(num_classes, dtype=np.int32)
    ranks = first_match_rank(images, classes, labels, class_ids, block_size=block_size)
    metrics = {f"zeroshot_top{k}": float(np.mean(ranks < k)) for k in ks if k <= num_classes}
    metrics["zeroshot_chance"] = 1.0 / num_classes
    return metrics
