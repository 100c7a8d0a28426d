"""Zero-shot on the built-in ``shapes_captions`` taken apart: a finished CLIP-task run's newest
checkpoint (its moving average of the parameters where it keeps one, as its evals), its
zero-shot split(s), top-1 split into the colour and the shape of the predicted
(colour, shape) class, under three ways of pooling the prompt templates:

- ``mean_embedding``: the run's own protocol (CLIP's prompt ensembling): the class embedding is
  the renormalised mean of its templates' unit embeddings;
- ``mean_cosine``: the image's cosine averaged over the templates (the same ranking unless the
  classes' mean embeddings differ in norm);
- ``max_cosine``: the best template per class (no ensembling: the template that matches the
  image's count, size and position wins).

It also prints how alike the text embeddings are: the mean cosine between the templates of one
class, of two classes of one colour and of two colours, and the mean cosine of each image with
its own caption. Written to see why SigLIP's demo falls short of InfoNCE's at zero-shot
(docs/results/siglip_demo.md); it reads only the run's files, never a test figure into a choice.

    python benchmarks/zeroshot_breakdown.py --workdir=runs/siglip_demo --split=test \
        --split=validation

Shapes: ``E`` is ``[classes, templates, dim]`` (unit rows), images ``[n, dim]``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jaxalign import config as config_lib
from jaxalign.data.builtin import shapes_captions
from jaxalign.parallel.sharding import activation_context
from jaxalign.train import absolute_path, setup_run
from jaxalign.train_lib import run_files
from jaxalign.train_lib.checkpoint import Checkpointer

NUM_SHAPES = len(shapes_captions.SHAPES)


def template_embeddings(task, params, names: list[str], templates: list[str]) -> np.ndarray:
    """``[classes, templates, dim]`` unit text embeddings of every prompt."""
    prompts = [t.format(name) for name in names for t in templates]
    ids, mask = (np.asarray(a) for a in task.tokenizer.encode_batch(prompts))
    size = task.config.evals.batch_size
    chunks = []
    for start in range(0, len(prompts), size):
        chunk_ids, chunk_mask = ids[start : start + size], mask[start : start + size]
        rows = chunk_ids.shape[0]
        pad = size - rows  # one shape for every call
        chunk_ids = np.concatenate([chunk_ids, np.repeat(chunk_ids[-1:], pad, 0)])
        chunk_mask = np.concatenate([chunk_mask, np.repeat(chunk_mask[-1:], pad, 0)])
        with activation_context(task.mesh):  # as the run's own zero-shot eval
            encoded = task._encode_text_fn(params, chunk_ids, chunk_mask)
        chunks.append(np.asarray(encoded)[:rows])
    return np.concatenate(chunks).reshape(len(names), len(templates), -1).astype(np.float64)


def class_scores(images: np.ndarray, E: np.ndarray) -> dict[str, np.ndarray]:
    """``[n, classes]`` scores under each template pooling."""
    cosines = np.einsum("nd,ctd->nct", images, E)
    mean = E.mean(axis=1)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    return {
        "mean_embedding": images @ mean.T,
        "mean_cosine": cosines.mean(axis=-1),
        "max_cosine": cosines.max(axis=-1),
    }


def text_similarity(E: np.ndarray) -> tuple[float, float, float]:
    """Mean template-to-template cosine within a class, across classes of one colour, across
    colours (labels are ``colour * NUM_SHAPES + shape``)."""
    classes = E.shape[0]
    mean_cos = np.einsum("ctd,ksd->ck", E, E) / E.shape[1] ** 2
    colour = np.arange(classes) // NUM_SHAPES
    same_colour = (colour[:, None] == colour[None, :]) & ~np.eye(classes, dtype=bool)
    return (
        float(np.mean(np.diag(mean_cos))),
        float(np.mean(mean_cos[same_colour])),
        float(np.mean(mean_cos[colour[:, None] != colour[None, :]])),
    )


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 of ``[n, classes]`` scores, a tie counted against the true class (as
    ``jaxalign.evals.zeroshot_accuracy`` counts it)."""
    true = scores[np.arange(len(labels)), labels]
    others = np.where(np.eye(scores.shape[1], dtype=bool)[labels], -np.inf, scores)
    return float(np.mean(true > others.max(axis=1)))


def main() -> None:
    """Prints, per split, top-1 and its colour and shape parts under each pooling, and the
    text-similarity figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished run of configs/clip.py")
    parser.add_argument("--split", action="append", required=True, help="a labelled split")
    args = parser.parse_args()
    workdir = absolute_path(args.workdir)
    config = config_lib.load_json(run_files.path_of(workdir, "config.json"))
    setup = setup_run(config, jax.devices())
    checkpointer = Checkpointer(run_files.path_of(workdir, "checkpoints"), keep=1, read_only=True)
    try:
        abstract = setup.abstract_state
        part, step = checkpointer.restore_part(
            {"params": abstract.params, "ema_params": abstract.ema_params}
        )
    finally:
        checkpointer.close()
    # What the run's own evals read: the moving average where the run keeps one.
    task = setup.task
    params = part["params"] if part["ema_params"] is None else part["ema_params"]
    print(f"{args.workdir} at step {step}, {config.objective.loss} loss")
    for split in args.split:
        out = task._embed_split(params, split, "zeroshot", False, key="--split")
        names = task.dataset.class_names(split, key="--split")
        E = template_embeddings(task, params, names, list(config.evals.templates))
        images, labels = np.asarray(out["image"], np.float64), np.asarray(out["label"])
        for pooling, scores in class_scores(images, E).items():
            predicted = scores.argmax(axis=1)
            print(
                f"  {split:>10} {pooling:>14}: top-1 {top1(scores, labels):.4f}, "
                f"colour {np.mean(predicted // NUM_SHAPES == labels // NUM_SHAPES):.4f}, "
                f"shape {np.mean(predicted % NUM_SHAPES == labels % NUM_SHAPES):.4f}"
            )
        within, same_colour, across = text_similarity(E)
        own = np.mean(np.sum(images * np.asarray(out["text"], np.float64), axis=1))
        print(
            f"  {split:>10} text cosine: one class {within:.3f}, one colour {same_colour:.3f}, "
            f"two colours {across:.3f}; image with its own caption {own:.3f}"
        )


if __name__ == "__main__":
    main()
