"""Input data: random-access sources, per-example transforms and the grain pipeline.

- :mod:`~jaxalign.data.sources`: ``tfds_source`` (TFDS datasets on local disk),
  ``WebDatasetSource`` (webdataset tar shards), ``ImageFolderSource`` (images + captions file);
- :mod:`~jaxalign.data.transforms`: robust image decoding, ``Skip`` markers for bad examples,
  and the ready-made per-example transforms, built on :mod:`~jaxalign.data.image_ops` (crops,
  flips, SimCLR augmentations, normalisation) and :mod:`~jaxalign.data.tokenizer`;
- :mod:`~jaxalign.data.pipeline`: ``make_pipeline`` (global shuffle, per-process shard,
  workers, skip counting, batching, exact resume) and ``to_global_array``.

Built-in datasets live in ``jaxalign.data.builtin`` (imported on its own: it registers TFDS
builders).
"""

from jaxalign.data.pipeline import Pipeline, PipelineIterator, make_pipeline, to_global_array
from jaxalign.data.sources import ImageFolderSource, WebDatasetSource, tfds_source
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
    "ExampleKey",
    "ImageFolderSource",
    "ImageTextTransform",
    "ImageTransform",
    "Pipeline",
    "PipelineIterator",
    "SimCLRTransform",
    "Skip",
    "TextTokenizer",
    "WebDatasetSource",
    "decode_image",
    "make_pipeline",
    "tfds_source",
    "to_global_array",
]
