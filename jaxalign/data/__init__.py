"""Input data: random-access sources, per-example transforms and the grain pipeline.

- :mod:`~jaxalign.data.sources`: ``tfds_source`` (TFDS datasets on local disk),
  ``WebDatasetSource`` (webdataset tar shards), ``ImageFolderSource`` (images + captions file),
  ``per_class_subset`` (``per_class`` records of each class, for few-shot training sets);
- :mod:`~jaxalign.data.transforms`: robust image decoding, ``Skip`` markers for bad examples,
  and the ready-made per-example transforms, built on :mod:`~jaxalign.data.image_ops` (crops,
  flips, SimCLR augmentations, normalisation) and :mod:`~jaxalign.data.tokenizer`;
- :mod:`~jaxalign.data.pipeline`: ``make_pipeline`` (global shuffle, per-process shard,
  workers, skip counting, batching, exact resume) and ``to_global_array``;
- :mod:`~jaxalign.data.example_cache`: ``ExampleCache`` (transformed examples kept by source
  index, for transforms without randomness: each record read and transformed once);
- :mod:`~jaxalign.data.streams`: ``zip_streams`` (several named streams, one batch of each per
  step, e.g. a labelled source and an unlabelled target domain, each resuming exactly).

Built-in datasets live in ``jaxalign.data.builtin`` (imported on its own: it registers TFDS
builders).
"""

from jaxalign.data.example_cache import ExampleCache
from jaxalign.data.pipeline import Pipeline, PipelineIterator, make_pipeline, to_global_array
from jaxalign.data.sources import (
    ImageFolderSource,
    Subset,
    WebDatasetSource,
    per_class_subset,
    tfds_source,
)
from jaxalign.data.streams import ZippedStream, zip_streams
from jaxalign.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    SKIP_REASONS,
    BadExample,
    ExampleKey,
    ImageTextTransform,
    ImageTransform,
    SimCLRTransform,
    Skip,
    TextTokenizer,
    decode_image,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "SKIP_REASONS",
    "BadExample",
    "ExampleCache",
    "ExampleKey",
    "ImageFolderSource",
    "ImageTextTransform",
    "ImageTransform",
    "Pipeline",
    "PipelineIterator",
    "SimCLRTransform",
    "Skip",
    "Subset",
    "TextTokenizer",
    "WebDatasetSource",
    "ZippedStream",
    "decode_image",
    "make_pipeline",
    "per_class_subset",
    "tfds_source",
    "to_global_array",
    "zip_streams",
]
