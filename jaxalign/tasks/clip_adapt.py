"""CLIP adapted across domains: the CLIP task plus an MMD or DANN term on the image embeddings
of an unlabelled target-domain image stream (``config.task="clip_adapt"``).

Batches are ``{"pairs": {"image", "ids", "mask"}, "target": {"image": [B, S, S, 3]}}`` (the
CLIP task's batch, and ``T`` target images drawn by a stream of their own, seed ``seed + 1``;
``T = adapt.target_batch_size``, 0 for ``B``);
``adapt.method="none"`` reads no target stream (``{"pairs": ...}``): the same run without the
adaptation term. Target records keep their image alone (``images.Unlabelled``): no caption or
label of the target domain reaches training.

Loss: ``CLIP loss + adapt.weight * term`` over the global batch, the term being

- ``mmd``: squared multi-kernel MMD (unbiased, DAN's bandwidths) between the source and target
  unit image embeddings ``[B, embed]`` and ``[T, embed]``;
- ``dann``: a domain discriminator (``models.DomainDiscriminator``, parameters under
  ``domain_discriminator/``) on the image embeddings through ``gradient_reversal``, its
  coefficient DANN's ``2 / (1 + exp(-10 p)) - 1`` of the progress ``p = step / train.steps``;
  the discriminator's loss is the mean over all ``B + T`` images (each domain weighted by its
  count).

A smaller ``T`` makes the step cheaper: the image tower runs forward and backward on ``B + T``
images.

Evals: the CLIP task's (zero-shot on ``evals.zeroshot_split``, retrieval), zero-shot on
``adapt.target_zeroshot_split`` (labelled, read by the eval only) as ``target/zeroshot_top1``,
and on ``adapt.source_validation_zeroshot_split`` as ``source_validation/zeroshot_top1``: a
source-domain split for choosing ``adapt.weight`` (or a step) without the test split (for
shapes_captions, ``heldout_validation``: the test split's held-out pairs, other scenes).
Keys and presets: ``configs/clip.py`` (``demo_adapt_*``).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxalign import models
from jaxalign.data import ImageTransform, make_pipeline, zip_streams
from jaxalign.objectives import domain
from jaxalign.schema import Count, Group, NonNegativeFloat, PositiveInt, shard_problems
from jaxalign.tasks import images
from jaxalign.tasks.base import register_task
from jaxalign.tasks.clip import ClipConfig, ClipTask, temperature_metrics

DISCRIMINATOR = "domain_discriminator"
# Extra zero-shot evals: metric prefix -> the ``adapt`` key naming the split.
ZEROSHOT_SPLITS = {
    "target": "target_zeroshot_split",
    "source_validation": "source_validation_zeroshot_split",
}


class ClipAdapt(Group):
    method: Literal["none", "mmd", "dann"]
    weight: NonNegativeFloat
    target_split: str
    target_batch_size: Count
    target_zeroshot_split: str
    source_validation_zeroshot_split: str
    discriminator_hidden: PositiveInt


class ClipAdaptConfig(ClipConfig):
    """The CLIP task's config plus ``adapt`` (keys documented in ``configs/clip.py``)."""

    task: Literal["clip_adapt"]  # type: ignore[assignment]
    adapt: ClipAdapt

    def rules(self) -> list[str]:
        problems = super().rules()
        if self.adapt.method != "none" and self.optim.micro_batches != 1:
            problems.append(
                f"optim.micro_batches={self.optim.micro_batches}: adapt.method="
                f"{self.adapt.method!r} needs 1 (no cached-gradient accumulation)"
            )
        if self.data.source == "webdataset":
            problems.append("data.source='webdataset': the target domain is a split; use tfds")
        if self.adapt.method != "none" and not self.adapt.target_split:
            problems.append(f"adapt.target_split='': adapt.method={self.adapt.method!r} needs one")
        return problems

    @property
    def target_batch(self) -> int:
        """The target stream's global batch: ``adapt.target_batch_size``, 0 for the source's."""
        return self.adapt.target_batch_size or self.train.global_batch_size

    def topology_problems(self, mesh_shape) -> list[str]:
        return super().topology_problems(mesh_shape) + shard_problems(
            "adapt.target_batch_size", self.target_batch, mesh_shape
        )


@register_task
class ClipAdaptTask(ClipTask):
    """CLIP with a domain-adaptation term (see the module docstring)."""

    name = "clip_adapt"
    Config = ClipAdaptConfig

    @property
    def adapting(self) -> bool:
        return self.config.adapt.method != "none"

    def prepare_data(self) -> None:
        super().prepare_data()
        adapt = self.config.adapt
        if adapt.target_split:
            self.dataset.source(adapt.target_split, key="adapt.target_split")
        for key in ZEROSHOT_SPLITS.values():
            if split := getattr(adapt, key):
                self.dataset.class_names(split, key=f"adapt.{key}")

    def train_stream(self) -> Any:
        streams = {"pairs": super().train_stream()}
        if self.adapting:
            data = self.config.data
            source = self.dataset.source(self.config.adapt.target_split, key="adapt.target_split")
            others = tuple(k for k in source[0] if k != "image")  # captions, labels, ...
            streams["target"] = make_pipeline(
                images.Unlabelled(source, others),
                seed=(self.config.seed + 1) % 2**32,
                global_batch_size=self.config.target_batch,
                transform=ImageTransform(data.image_size, train=True, scale=(0.9, 1.0), flip=False),
                worker_count=data.worker_count,
                prefetch=data.prefetch,
                max_skipped_in_a_row=data.max_skipped_in_a_row,
            )
        return zip_streams(streams)

    def batch_spec(self) -> dict[str, Any]:
        spec = {"pairs": super().batch_spec()}
        if self.adapting:
            image = spec["pairs"]["image"]
            shape = (self.config.target_batch, *image.shape[1:])
            spec["target"] = {"image": jax.ShapeDtypeStruct(shape, image.dtype)}
        return spec

    @property
    def discriminator(self) -> models.DomainDiscriminator:
        return models.DomainDiscriminator(self.config.adapt.discriminator_hidden)

    def init(self, rng: jax.Array) -> Any:
        variables = super().init(rng)
        if self.config.adapt.method == "dann":
            embed_dim = self.model.embed_dim
            params = self.discriminator.init(
                jax.random.fold_in(rng, 1), jnp.zeros((1, embed_dim), jnp.float32)
            )["params"]
            variables = {**variables, "params": {**variables["params"], DISCRIMINATOR: params}}
        return variables

    def embed(self, params: Any, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        return super().embed(_clip_params(params), batch)

    def loss(self, params, model_state, batch, rng, step):
        """The CLIP loss on ``batch["pairs"]`` plus ``adapt.weight`` times the domain term."""
        del rng
        image, text = self.embed(params, batch["pairs"])
        loss = self.loss_on_embeddings(params, (image, text))
        metrics = temperature_metrics(params)
        if not self.adapting:
            return loss, model_state, metrics
        target, _ = self.model.apply(
            {"params": _clip_params(params)}, batch["target"]["image"], method="encode_image"
        )
        if self.config.adapt.method == "mmd":
            term = domain.mmd(image, target, mesh=self.mesh)
        else:
            coeff = domain.reversal_coefficient(step / self.config.train.steps)
            reversed_image, reversed_target = domain.gradient_reversal((image, target), coeff)
            discriminate = self.discriminator.apply
            term, accuracy = domain.domain_adversarial_loss(
                discriminate({"params": params[DISCRIMINATOR]}, reversed_image),
                discriminate({"params": params[DISCRIMINATOR]}, reversed_target),
                mesh=self.mesh,
            )
            metrics.update(reversal_coefficient=coeff, discriminator_accuracy=accuracy)
        metrics.update(clip_loss=loss, domain_term=term)
        return loss + self.config.adapt.weight * term, model_state, metrics

    def evaluate(self, variables: Any, *, progress: bool = False) -> dict[str, float]:
        """The CLIP task's evals and zero-shot on each split of ``ZEROSHOT_SPLITS`` that is
        set (``target/zeroshot_top1``, ``source_validation/zeroshot_top1`` ...)."""
        params = _clip_params(variables["params"])
        results = super().evaluate({**variables, "params": params}, progress=progress)
        for prefix, key in ZEROSHOT_SPLITS.items():
            if split := getattr(self.config.adapt, key):
                scores = self.zeroshot(params, split, key=f"adapt.{key}", progress=progress)
                results.update({f"{prefix}/{k}": v for k, v in scores.items()})
        return results


def _clip_params(params: Any) -> Any:
    """The dual encoder's parameters: ``params`` without the discriminator's."""
    return {k: v for k, v in params.items() if k != DISCRIMINATOR}
