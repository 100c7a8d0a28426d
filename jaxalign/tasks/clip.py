"""The CLIP / SigLIP task: a dual encoder trained with InfoNCE or the sigmoid loss over the
global batch, its data, and its evals (zero-shot classification, image <-> text retrieval).

Batches are ``{"image": [batch, S, S, 3] float32, "ids": [batch, L] int32, "mask": [batch, L]
int32}``, batch over (``data``, ``fsdp``). The loss's ``impl`` (naive, tiled, ring) and
cached-gradient accumulation (``optim.micro_batches > 1``) come from the config.

Data (``config.data``): a built-in dataset (built under ``data_dir`` on first use), a TFDS
dataset prepared on disk, or webdataset shards; captions are tokenised with the built-in
caption tokenizer or a local Hugging Face tokenizer directory. Zero-shot classes are the names
of the eval split's ``label`` feature (a TFDS ``ClassLabel``), put into ``evals.templates``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign import evals, models, objectives
from jaxalign.config import ConfigError
from jaxalign.data import ImageTextTransform, TextTokenizer, make_pipeline
from jaxalign.parallel.sharding import activation_context

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ClipTask:
    """Model, loss and batch layout of CLIP-style training (see the module docstring)."""

    name = "clip"

    def __init__(self, config: Any):
        self.config = config
        model = config.model
        dtype = DTYPES[model.dtype]
        tower = dict(dtype=dtype, remat=model.remat)
        dual: dict[str, Any] = {"logit_scale_init": float(model.logit_scale_init)}
        if model.logit_bias_init is not None:
            dual["logit_bias_init"] = float(model.logit_bias_init)
        self.model = models.build(
            model.preset,
            image={**tower, **dict(model.image)},
            text={**tower, "max_len": int(config.data.max_len), **dict(model.text)},
            **dual,
        )

    # --- data ---------------------------------------------------------------------------------

    @property
    def data_dir(self) -> str:
        return os.path.expanduser(self.config.data.data_dir)

    def prepare_data(self) -> None:
        """Builds a built-in dataset (and its tokenizer) if it is not on disk yet. Process 0
        builds first; the others then find it (a shared disk) or build their own copy (a
        local one)."""
        if self.config.data.source != "builtin":
            return
        from jaxalign.data import builtin

        def build() -> None:
            builtin.prepare(self.config.data.name, self.data_dir)
            tokenizer = os.path.join(self.data_dir, builtin.TOKENIZER_DIRNAME)
            if not self.config.data.tokenizer and (
                jax.process_index() == 0 or not os.path.isdir(tokenizer)
            ):
                builtin.build_caption_tokenizer(self.data_dir)

        if jax.process_index() == 0:
            build()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxalign: built-in data prepared")
            if jax.process_index() > 0:
                build()

    @functools.cached_property
    def tokenizer(self) -> TextTokenizer:
        """Captions -> ``([L] ids, [L] mask)``, ``L = data.max_len``."""
        from jaxalign.interop import hf

        path = self.config.data.tokenizer
        if not path:  # the built-in caption tokenizer (validate() allows this for builtin only)
            from jaxalign.data.builtin import TOKENIZER_DIRNAME

            path = os.path.join(self.data_dir, TOKENIZER_DIRNAME)
        return TextTokenizer(hf.load_tokenizer(os.path.expanduser(path)), self.config.data.max_len)

    def source(self, split: str, *, key: str = "data.train_split") -> Any:
        """A random-access source of the configured dataset's ``split`` (images undecoded).

        Raises ConfigError naming ``key`` when the split or the dataset is not there.
        """
        data = self.config.data
        if data.source == "webdataset":
            from jaxalign.data import WebDatasetSource

            return WebDatasetSource(data.shards)
        from jaxalign.data import tfds_source

        try:
            return tfds_source(data.name, self.data_dir, split, decode_images=False)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"config.{key}={split!r}: {error}") from None

    def transform(self, *, train: bool, label: bool = False) -> ImageTextTransform:
        return ImageTextTransform(
            image_size=int(self.config.data.image_size),
            tokenizer=self.tokenizer,
            train=train,
            label_key="label" if label else None,
        )

    def train_pipeline(self) -> Any:
        """This process's endless stream of training batches (``global_batch_size /
        process_count`` examples each), resumable with ``get_state`` / ``set_state``."""
        data = self.config.data
        return make_pipeline(
            self.source(data.train_split),
            seed=int(self.config.seed),
            global_batch_size=int(self.config.train.global_batch_size),
            transform=self.transform(train=True),
            worker_count=int(data.worker_count),
            prefetch=int(data.prefetch),
        )

    def _embed_split(
        self, params: Any, mesh: Mesh, split: str, eval_name: str, progress: bool
    ) -> dict[str, np.ndarray]:
        """``{"image": [n, embed], "text": [n, embed]}`` (+ ``"label"`` for zero-shot) of the
        first ``evals.max_examples`` of ``split`` (all when 0), embedded sharded over the mesh."""
        ev = self.config.evals
        label = eval_name == "zeroshot"
        key = f"evals.{eval_name}_split"
        limit = int(ev.max_examples)
        pipeline = make_pipeline(
            self.source(f"{split}[:{limit}]" if limit else split, key=key),
            seed=int(self.config.seed),
            global_batch_size=int(ev.batch_size),
            transform=self.transform(train=False, label=label),
            num_epochs=1,
            drop_remainder=False,
            prefetch=0,
        )
        return evals.embed_dataset(
            self._embed_fn,
            pipeline,
            mesh,
            global_batch_size=int(ev.batch_size),
            keep=("label",) if label else (),
            params=params,
            progress=progress,
            desc=f"{eval_name} ({split})",
        )

    def check_eval_data(self) -> None:
        """Opens every eval split (and its class names), so a missing one fails before the
        train step compiles; raises ConfigError naming the key."""
        ev = self.config.evals
        if ev.zeroshot_split:
            self.class_names(ev.zeroshot_split)
        if ev.retrieval_split:
            self.source(ev.retrieval_split, key="evals.retrieval_split")

    def class_names(self, split: str) -> list[str]:
        """The names of the ``label`` classes of ``split``'s dataset, in label order."""
        source = self.source(split, key="evals.zeroshot_split")
        feature = getattr(source, "dataset_info", None)
        features = feature.features if feature is not None else {}
        if "label" not in features or not hasattr(features["label"], "names"):
            raise ConfigError(
                f"config.evals.zeroshot_split={split!r}: dataset {self.config.data.name!r} has "
                "no 'label' class feature to name the zero-shot classes"
            )
        return list(features["label"].names)

    # --- model ----------------------------------------------------------------------------------

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of zeros with the task's shapes and dtypes (for init and shardings)."""
        size, length = int(self.config.data.image_size), int(self.config.data.max_len)
        return {
            "image": np.zeros((batch_size, size, size, 3), np.float32),
            "ids": np.zeros((batch_size, length), np.int32),
            "mask": np.ones((batch_size, length), np.int32),
        }

    def init(self, rng: jax.Array, batch: dict[str, Any]) -> Any:
        """Boxed variables (logical axis names kept, for ``sharded_init``)."""
        return self.model.init(rng, batch["image"], batch["ids"], batch["mask"])

    def embed(self, params: Any, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        """``([batch, embed], [batch, embed])`` unit image and text embeddings."""
        outputs, _ = self.model.apply(
            {"params": params}, batch["image"], batch["ids"], batch["mask"]
        )
        return outputs["image"], outputs["text"]

    def loss_on_embeddings(self, params: Any, embeddings: Any, mesh: Mesh | None) -> jax.Array:
        """The configured loss over the global batch of ``embeddings``."""
        image, text = embeddings
        objective = self.config.objective
        if objective.loss == "siglip":
            return objectives.siglip_loss(
                image,
                text,
                params["logit_scale"],
                params["logit_bias"],
                mesh=mesh,
                impl=objective.impl,
                tile=int(objective.tile),
            )
        return objectives.clip_loss(
            image,
            text,
            params["logit_scale"],
            mesh=mesh,
            impl=objective.impl,
            tile=int(objective.tile),
            label_smoothing=float(objective.label_smoothing),
        )

    def make_grad_fn(self, mesh: Mesh | None):
        """``grad_fn(params, batch) -> (loss, grads, metrics)`` for ``make_train_step``."""
        micro_batches = int(self.config.optim.micro_batches)

        def metrics_of(params):
            return {"logit_scale": jnp.exp(params["logit_scale"])}

        if micro_batches > 1:

            def grad_fn(params, batch):
                loss, grads = objectives.cached_gradient(
                    self.embed,
                    lambda p, e: self.loss_on_embeddings(p, e, mesh),
                    params,
                    batch,
                    num_microbatches=micro_batches,
                    mesh=mesh,
                )
                return loss, grads, metrics_of(params)

            return grad_fn

        def loss_fn(params, batch):
            return self.loss_on_embeddings(params, self.embed(params, batch), mesh)

        def grad_fn(params, batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            return loss, grads, metrics_of(params)

        return grad_fn

    # --- evals ----------------------------------------------------------------------------------

    @functools.cached_property
    def _embed_fn(self):
        def embed(params, batch):
            image, text = self.embed(params, batch)
            return {"image": image, "text": text}

        return jax.jit(embed)

    def _encode_text_fn(self, mesh: Mesh):
        """``(params, ids [b, L], mask [b, L]) -> [b, embed]``, jitted once per mesh, with the
        output replicated: every process reads the whole of it (class prompts are the same on
        all processes)."""
        cache = self.__dict__.setdefault("_encode_text_fns", {})
        if mesh not in cache:

            def encode_text(params, ids, mask):
                text, _ = self.model.apply({"params": params}, ids, mask, method="encode_text")
                return text

            cache[mesh] = jax.jit(encode_text, out_shardings=NamedSharding(mesh, PartitionSpec()))
        return cache[mesh]

    def evaluate(self, params: Any, mesh: Mesh, *, progress: bool = False) -> dict[str, float]:
        """Zero-shot top-1 / top-5 on ``evals.zeroshot_split`` (and its chance rate) and
        image <-> text recall@1/5/10 on ``evals.retrieval_split``; either is skipped when its
        split is ``""``. Each split is embedded once, sharded over the mesh."""
        ev = self.config.evals
        results: dict[str, float] = {}
        if ev.zeroshot_split:
            out = self._embed_split(params, mesh, ev.zeroshot_split, "zeroshot", progress)
            with activation_context(mesh):
                classes = evals.class_text_embeddings(
                    functools.partial(self._encode_text_fn(mesh), params),
                    self.tokenizer.encode_batch,
                    self.class_names(ev.zeroshot_split),
                    tuple(ev.templates),
                    batch_size=int(ev.batch_size),
                )
            results.update(evals.zeroshot_accuracy(out["image"], out["label"], classes))
        if ev.retrieval_split:
            out = self._embed_split(params, mesh, ev.retrieval_split, "retrieval", progress)
            results.update(evals.retrieval_recall(out["image"], out["text"]))
        return results
