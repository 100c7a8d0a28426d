"""Built-in and user datasets take one path: a built-in dataset, prepared on disk, read by
``tfds_source`` into the grain pipeline with the built-in tokenizer, to global batches."""

from pathlib import Path

import jax
import numpy as np
from transformers import AutoTokenizer

from jaxalign.data.builtin import build_caption_tokenizer, prepare
from jaxalign.data.pipeline import make_pipeline, to_global_array
from jaxalign.data.sources import tfds_source
from jaxalign.data.transforms import ImageTextTransform, TextTokenizer
from jaxalign.parallel import make_mesh


def test_shapes_captions_through_the_pipeline(tmp_path: Path):
    builder = prepare(
        "shapes_captions", tmp_path, image_size=32, num_train=24, num_validation=8, num_test=8
    )
    name = f"shapes_captions/{builder.builder_config.name}"
    source = tfds_source(name, tmp_path, "train", decode_images=False)
    tokenizer = AutoTokenizer.from_pretrained(
        str(build_caption_tokenizer(tmp_path)), local_files_only=True
    )
    transform = ImageTextTransform(image_size=32, tokenizer=TextTokenizer(tokenizer, 16))
    pipeline = make_pipeline(source, seed=0, global_batch_size=8, transform=transform)
    iterator = iter(pipeline)
    batch = next(iterator)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["ids"].shape == batch["mask"].shape == (8, 16)
    assert np.all(batch["ids"][:, 0] == tokenizer.cls_token_id)
    assert tokenizer.unk_token_id not in batch["ids"]
    assert iterator.skip_counts() == {} or sum(iterator.skip_counts().values()) == 0

    mesh = make_mesh({"data": 8})
    global_batch = to_global_array(batch, mesh)
    assert global_batch["image"].shape == (8, 32, 32, 3)
    assert len(global_batch["image"].sharding.device_set) == 8
    np.testing.assert_array_equal(jax.device_get(global_batch["ids"]), batch["ids"])
