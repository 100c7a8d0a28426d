"""The CLIP / SigLIP task: a dual encoder trained with InfoNCE or the sigmoid loss over the
global batch, its config schema, its data, and its evals (zero-shot classification, image <->
text retrieval).

Batches are ``{"image": [batch, S, S, 3] float32, "ids": [batch, L] int32, "mask": [batch, L]
int32}``, batch over (``data``, ``fsdp``). The loss's ``impl`` (naive, tiled, ring) and
cached-gradient accumulation (``optim.micro_batches > 1``) come from the config.

Data (``config.data``): a built-in dataset (built under ``data_dir`` on first use), a TFDS
dataset prepared on disk, or webdataset shards; captions are tokenised with the built-in
caption tokenizer or a local Hugging Face tokenizer directory. Zero-shot classes are the names
of the eval split's ``label`` feature (a TFDS ``ClassLabel``), put into ``evals.templates``.
The keys are documented in ``configs/clip.py``.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign import evals, models, objectives
from jaxalign.data import ImageTextTransform, TextTokenizer, make_pipeline
from jaxalign.parallel import batch_sharding
from jaxalign.parallel.sharding import activation_context
from jaxalign.schema import (
    Count,
    Group,
    MissingDataError,
    ModuleFields,
    PositiveInt,
    Unit,
)
from jaxalign.tasks import images
from jaxalign.tasks.base import ParamGroup, Task, register_task

# --- config ------------------------------------------------------------------------------------


class ClipModel(images.ImageModel):
    preset: images.Preset  # type: ignore[assignment]  # a dual-encoder size (no ResNet)
    logit_scale_init: float
    learn_temperature: bool  # False: logit_scale stays at its init (lr_mult 0)
    logit_bias_init: float | None
    text: Annotated[
        dict[str, Any],
        ModuleFields(
            (("jaxalign.models.text", "TextTransformer"),),
            {"dtype": "model.dtype", "remat": "model.remat", "max_len": "data.max_len"},
        ),
    ]


class ClipData(Group):
    source: Literal["builtin", "tfds", "webdataset"]
    name: str
    data_dir: str
    train_split: str
    image_size: PositiveInt
    max_len: PositiveInt
    shards: str
    tokenizer: str
    worker_count: Count
    prefetch: Count
    max_skipped_in_a_row: PositiveInt

    def rules(self) -> list[str]:
        problems = images.dataset_problems(self)
        if self.source != "builtin" and not self.tokenizer:
            problems.append(
                f"tokenizer='': data.source={self.source!r} needs a tokenizer directory (the "
                "built-in caption tokenizer only covers data.source='builtin')"
            )
        if self.source == "webdataset" and not self.shards:
            problems.append("shards='': data.source='webdataset' needs shards")
        return problems


class ClipObjective(Group):
    loss: Literal["clip", "siglip"]
    impl: Literal[objectives.contrastive.IMPLS]  # type: ignore[valid-type]
    tile: PositiveInt
    label_smoothing: Unit


class ClipEvals(Group):
    zeroshot_split: str
    retrieval_split: str
    templates: tuple[str, ...]
    batch_size: PositiveInt
    max_examples: Count

    def rules(self) -> list[str]:
        problems = [
            f"templates={self.templates!r}: {t!r} needs one '{{}}' for the class name"
            for t in self.templates
            if t.count("{}") != 1
        ]
        if self.zeroshot_split and not self.templates:
            problems.append("templates=(): zero-shot evaluation needs a template")
        return problems


class ClipConfig(images.ImageTaskConfig):
    """The CLIP task's config (keys documented in ``configs/clip.py``)."""

    task: Literal["clip"]
    model: ClipModel
    data: ClipData
    objective: ClipObjective
    evals: ClipEvals

    def rules(self) -> list[str]:
        model, objective = self.model, self.objective
        problems = []
        if objective.loss == "siglip" and model.logit_bias_init is None:
            problems.append(
                "model.logit_bias_init=None: objective.loss='siglip' needs a bias (SigLIP: -10)"
            )
        if objective.loss == "clip" and model.logit_bias_init is not None:
            problems.append(
                f"model.logit_bias_init={model.logit_bias_init!r}: objective.loss='clip' has "
                "no bias; set it to none"
            )
        if objective.loss == "siglip" and objective.label_smoothing:
            problems.append(
                f"objective.label_smoothing={objective.label_smoothing!r}: only "
                "objective.loss='clip' smooths labels"
            )
        if self.data.source == "webdataset":
            problems += [
                f"evals.{key}={getattr(self.evals, key)!r}: webdataset shards have no splits; "
                "use data.source='tfds' or 'builtin' for evals, or set it to ''"
                for key in ("zeroshot_split", "retrieval_split")
                if getattr(self.evals, key)
            ]
        return problems + images.image_tower_problems(model, self.data.image_size)

    def check_data(self) -> None:
        super().check_data()
        data = self.data
        if data.source == "webdataset":
            from jaxalign.data.sources import expand_shards

            paths = expand_shards(data.shards)
            missing = [p for p in paths if not os.path.isfile(p)]
            if not paths:
                raise MissingDataError(f"config.data.shards={data.shards!r}: matches no files")
            if missing:
                raise MissingDataError(
                    f"config.data.shards={data.shards!r}: {len(missing)} of its {len(paths)} "
                    f"shards are missing, e.g. {missing[0]!r}"
                )
        if data.tokenizer and not os.path.isdir(os.path.expanduser(data.tokenizer)):
            raise MissingDataError(
                f"config.data.tokenizer={data.tokenizer!r}: no tokenizer directory there"
            )


# --- task --------------------------------------------------------------------------------------


@register_task
class ClipTask(Task):
    """Model, loss, data and evals of CLIP-style training (see the module docstring)."""

    name = "clip"
    Config = ClipConfig

    def __init__(self, config: ClipConfig, mesh: Mesh):
        self.config, self.mesh = config, mesh
        model = config.model
        tower = dict(dtype=images.DTYPES[model.dtype], remat=model.remat)
        dual: dict[str, Any] = {"logit_scale_init": float(model.logit_scale_init)}
        if model.logit_bias_init is not None:
            dual["logit_bias_init"] = float(model.logit_bias_init)
        self.model = models.build(
            model.preset,
            image={**tower, **model.image},
            text={**tower, "max_len": config.data.max_len, **model.text},
            **dual,
        )
        self.dataset = images.ImageDataset(config.data)

    # --- data ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Builds a built-in dataset (and its tokenizer) if it is not on disk yet, then opens
        every eval split, so a missing one fails before the train step compiles."""
        data = self.config.data

        def tokenizer() -> None:
            from jaxalign.data import builtin

            path = os.path.join(self.dataset.data_dir, builtin.TOKENIZER_DIRNAME)
            if not data.tokenizer and (jax.process_index() == 0 or not os.path.isdir(path)):
                builtin.build_caption_tokenizer(self.dataset.data_dir)

        self.dataset.prepare(tokenizer)
        ev = self.config.evals
        if ev.zeroshot_split:
            self.dataset.class_names(ev.zeroshot_split, key="evals.zeroshot_split")
        if ev.retrieval_split:
            self.source(ev.retrieval_split, key="evals.retrieval_split")

    @functools.cached_property
    def tokenizer(self) -> TextTokenizer:
        """Captions -> ``([L] ids, [L] mask)``, ``L = data.max_len``."""
        path, max_len = self.config.data.tokenizer, self.config.data.max_len
        if not path:  # the built-in caption tokenizer (allowed for builtin data only)
            from jaxalign.data.builtin import load_caption_tokenizer

            return TextTokenizer(load_caption_tokenizer(self.dataset.data_dir), max_len, pad_id=0)
        from jaxalign.interop import hf

        return TextTokenizer(hf.load_tokenizer(os.path.expanduser(path)), max_len)

    def source(self, split: str, *, key: str = "data.train_split", limit: int = 0) -> Any:
        """A random-access source of the configured data's ``split`` (images undecoded), its
        first ``limit`` records when ``limit > 0``."""
        if self.config.data.source == "webdataset":
            from jaxalign.data import WebDatasetSource

            return WebDatasetSource(self.config.data.shards)
        return self.dataset.source(split, key=key, limit=limit)

    def transform(self, *, train: bool, label: bool = False) -> ImageTextTransform:
        return ImageTextTransform(
            image_size=self.config.data.image_size,
            tokenizer=self.tokenizer,
            train=train,
            label_key="label" if label else None,
        )

    def train_stream(self) -> Any:
        """This process's endless stream of training batches (``global_batch_size /
        process_count`` examples each), resumable with ``get_state`` / ``set_state``."""
        data = self.config.data
        return make_pipeline(
            self.source(data.train_split),
            seed=self.config.seed,
            global_batch_size=self.config.train.global_batch_size,
            transform=self.transform(train=True),
            worker_count=data.worker_count,
            prefetch=data.prefetch,
            max_skipped_in_a_row=data.max_skipped_in_a_row,
        )

    # --- model ----------------------------------------------------------------------------------

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        batch = self.config.train.global_batch_size
        size, length = self.config.data.image_size, self.config.data.max_len
        return {
            "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
            "ids": jax.ShapeDtypeStruct((batch, length), jnp.int32),
            "mask": jax.ShapeDtypeStruct((batch, length), jnp.int32),
        }

    def init(self, rng: jax.Array) -> Any:
        """Boxed variables, from a batch of one (the parameters do not depend on its size)."""
        size, length = self.config.data.image_size, self.config.data.max_len
        return self.model.init(
            rng,
            jnp.zeros((1, size, size, 3), jnp.float32),
            jnp.zeros((1, length), jnp.int32),
            jnp.ones((1, length), jnp.int32),
        )

    def embed(self, params: Any, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        """``([batch, embed], [batch, embed])`` unit image and text embeddings."""
        outputs, _ = self.model.apply(
            {"params": params}, batch["image"], batch["ids"], batch["mask"]
        )
        return outputs["image"], outputs["text"]

    def loss_on_embeddings(self, params: Any, embeddings: Any) -> jax.Array:
        """The configured loss over the global batch of ``embeddings``."""
        image, text = embeddings
        objective = self.config.objective
        if objective.loss == "siglip":
            return objectives.siglip_loss(
                image,
                text,
                params["logit_scale"],
                params["logit_bias"],
                mesh=self.mesh,
                impl=objective.impl,
                tile=objective.tile,
            )
        return objectives.clip_loss(
            image,
            text,
            params["logit_scale"],
            mesh=self.mesh,
            impl=objective.impl,
            tile=objective.tile,
            label_smoothing=objective.label_smoothing,
        )

    def objective_probe(self) -> tuple[Any, tuple[jax.ShapeDtypeStruct, ...]]:
        """The configured loss alone on the global batch's two ``[B, embed_dim]`` float32 unit
        embeddings over the mesh's batch axes, at the initial temperature (and bias)."""
        batch = self.config.train.global_batch_size
        spec = jax.ShapeDtypeStruct(
            (batch, self.model.embed_dim), jnp.float32, sharding=batch_sharding(self.mesh)
        )
        model = self.config.model
        scales = {  # Python floats: checked once, not traced
            "logit_scale": float(model.logit_scale_init),
            "logit_bias": float(model.logit_bias_init or 0.0),
        }
        return (lambda embeddings: self.loss_on_embeddings(scales, embeddings)), (spec, spec)

    def param_groups(self) -> tuple[ParamGroup, ...]:
        """The temperature frozen at its init unless ``model.learn_temperature``."""
        frozen = not self.config.model.learn_temperature
        return (ParamGroup(r"^logit_scale$", 0.0),) if frozen else ()

    def loss(self, params, model_state, batch, rng, step):
        """InfoNCE / SigLIP over the global batch; no model state, no randomness."""
        del rng, step
        loss = self.loss_on_embeddings(params, self.embed(params, batch))
        return loss, model_state, temperature_metrics(params)

    def loss_and_grad(self, params, model_state, batch, rng, step):
        """Plain ``jax.grad``, or with ``optim.micro_batches > 1`` cached-gradient
        accumulation: the towers run micro-batch by micro-batch, the loss sees the whole
        global batch."""
        micro_batches = self.config.optim.micro_batches
        if micro_batches == 1:
            return super().loss_and_grad(params, model_state, batch, rng, step)
        loss, grads = objectives.cached_gradient(
            self.embed,
            self.loss_on_embeddings,
            params,
            batch,
            num_microbatches=micro_batches,
            mesh=self.mesh,
        )
        return loss, grads, model_state, temperature_metrics(params)

    # --- evals ----------------------------------------------------------------------------------

    @functools.cached_property
    def _embed_fn(self):
        def embed(params, batch):
            image, text = self.embed(params, batch)
            return {"image": image, "text": text}

        return jax.jit(embed)

    @functools.cached_property
    def _encode_text_fn(self):
        """``(params, ids [b, L], mask [b, L]) -> [b, embed]``, with the output replicated:
        every process reads the whole of it (class prompts are the same on all processes)."""

        def encode_text(params, ids, mask):
            text, _ = self.model.apply({"params": params}, ids, mask, method="encode_text")
            return text

        return jax.jit(encode_text, out_shardings=NamedSharding(self.mesh, PartitionSpec()))

    def _embed_split(
        self, params: Any, split: str, eval_name: str, progress: bool, key: str = ""
    ) -> dict[str, np.ndarray]:
        """``{"image": [n, embed], "text": [n, embed]}`` (+ ``"label"`` for zero-shot) of the
        first ``evals.max_examples`` of ``split`` (all when 0), embedded sharded over the mesh;
        ``key`` names the split's config key (default ``evals.<eval_name>_split``)."""
        ev = self.config.evals
        label = eval_name == "zeroshot"
        pipeline = images.eval_pipeline(
            self.source(split, key=key or f"evals.{eval_name}_split", limit=ev.max_examples),
            self.config,
            self.transform(train=False, label=label),
        )
        return evals.embed_dataset(
            self._embed_fn,
            pipeline,
            self.mesh,
            global_batch_size=ev.batch_size,
            keep=("label",) if label else (),
            params=params,
            progress=progress,
            desc=f"{eval_name} ({split})",
        )

    def evaluate(self, variables: Any, *, progress: bool = False) -> dict[str, float]:
        """Zero-shot top-1 / top-5 on ``evals.zeroshot_split`` (and its chance rate) and
        image <-> text recall@1/5/10 on ``evals.retrieval_split``; either is skipped when its
        split is ``""``. Each split is embedded once, sharded over the mesh."""
        ev, params = self.config.evals, variables["params"]
        results: dict[str, float] = {}
        if ev.zeroshot_split:
            results.update(self.zeroshot(params, ev.zeroshot_split, progress=progress))
        if ev.retrieval_split:
            out = self._embed_split(params, ev.retrieval_split, "retrieval", progress)
            results.update(evals.retrieval_recall(out["image"], out["text"]))
        return results

    def zeroshot(
        self, params: Any, split: str, *, key: str = "evals.zeroshot_split", progress: bool = False
    ) -> dict[str, float]:
        """Zero-shot top-1 / top-5 (and the chance rate) of ``split``'s images among the names
        of its ``label`` classes put into ``evals.templates`` (``key``: the split's config key)."""
        ev = self.config.evals
        out = self._embed_split(params, split, "zeroshot", progress, key=key)
        names = self.dataset.class_names(split, key=key)
        with activation_context(self.mesh):
            classes = evals.class_text_embeddings(
                functools.partial(self._encode_text_fn, params),
                self.tokenizer.encode_batch,
                names,
                ev.templates,
                batch_size=ev.batch_size,
            )
        return evals.zeroshot_accuracy(out["image"], out["label"], classes)


def temperature_metrics(params: Any) -> dict[str, jax.Array]:
    """The logged ``logit_scale`` (the inverse temperature itself, not its log) and, with a
    bias parameter (SigLIP), ``logit_bias``: scalars."""
    metrics = {"logit_scale": jnp.exp(params["logit_scale"])}
    if "logit_bias" in params:
        metrics["logit_bias"] = params["logit_bias"]
    return metrics
