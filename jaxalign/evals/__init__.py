"""Evaluations of trained encoders on host-side embeddings.

- :mod:`~jaxalign.evals.embed`: ``embed_dataset`` runs a jitted embedding function over a finite
  stream of batches on the mesh (padded to one shape, compiled once) and returns numpy arrays;
- :mod:`~jaxalign.evals.zeroshot`: CLIP's zero-shot classification: ``class_text_embeddings``
  (prompt ensembling over templates) and ``zeroshot_accuracy`` (top-k);
- :mod:`~jaxalign.evals.retrieval`: image <-> text ``retrieval_recall`` (R@k, several captions
  per image), computed in row blocks (memory ``O(block * n)``), ties counted against the
  correct item;
- :mod:`~jaxalign.evals.probe`: frozen-feature probes of any encoder: ``knn_accuracy`` (weighted
  k-NN, as in DINO), ``linear_probe`` (logistic regression, ``C`` chosen by cross-validation
  on the training split only), ``few_shot_indices`` and ``probe_suite`` (both, full and
  few-shot, as the self-supervised tasks report them).

Typical use for a dual encoder (``embed_fn`` returns ``{"image": ..., "text": ...}``)::

    out = embed_dataset(embed_fn, pipeline, mesh, global_batch_size=256, keep=("label",))
    classes = class_text_embeddings(encode_text, tokenizer.encode_batch, names, templates)
    metrics = {**zeroshot_accuracy(out["image"], out["label"], classes),
               **retrieval_recall(out["image"], out["text"])}
"""

from typing import Any

from jaxalign.evals.embed import embed_dataset
from jaxalign.evals.retrieval import first_match_rank, retrieval_recall
from jaxalign.evals.zeroshot import DEFAULT_TEMPLATES, class_text_embeddings, zeroshot_accuracy

PROBE_NAMES = ("few_shot_indices", "knn_accuracy", "linear_probe", "probe_suite")


def __getattr__(name: str) -> Any:
    """The names of ``evals.probe`` import ``evals.probe`` (and scikit-learn, a second
    of start-up) when first used, not with the package."""
    if name in PROBE_NAMES:
        from jaxalign.evals import probe

        return getattr(probe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_TEMPLATES",
    "class_text_embeddings",
    "embed_dataset",
    "few_shot_indices",
    "first_match_rank",
    "knn_accuracy",
    "linear_probe",
    "probe_suite",
    "retrieval_recall",
    "zeroshot_accuracy",
]
