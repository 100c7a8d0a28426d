"""Unsupervised domain adaptation: a labelled source domain and an unlabelled target domain,
trained together; source-only, DANN, MK-MMD (DAN), Deep CORAL, and training on target labels
as the upper bound. Its config schema lives here; keys and presets in
``configs/adapt_digits.py``.

Batches are ``{"source": {"image": [B, S, S, 3], "label": [B]}, "target": {"image": [B, S, S,
3]}}``, each domain a stream of its own with a global batch of ``train.global_batch_size``,
batch over (``data``, ``fsdp``); ``source_only`` reads no target stream, ``train_on_target``
reads the target's labels too. For every other method the target records lose their labels
before the transform sees them (``images.Unlabelled``): no step and no label-free validator can
read them. The model is ``models.AdaptationNet``: image tower, bottleneck, head, discriminator.

Loss (every statistic over the global batch: ``objectives.domain``):
``CE(source) + w * domain term``, the domain term being

- ``dann``: the discriminator's binary cross-entropy on the bottleneck features seen through
  ``gradient_reversal`` with coefficient ``lambda(step)`` (``objective.schedule``: DANN's
  ``2 / (1 + exp(-gamma p)) - 1`` of the progress ``p = step / train.steps``, or the warm-start
  form over ``objective.warm_start_steps``); the discriminator trains at
  ``objective.discriminator_lr_mult`` times the learning rate;
- ``mmd``: squared multi-kernel MMD between source and target bottleneck features;
- ``coral``: Deep CORAL between them;
- ``train_on_target``: cross-entropy on the target's labels (the upper bound; labels read on
  purpose).

Evals, each eval step (rows of ``metrics.jsonl``, ``eval/`` prefixed): ``source_validation_top1``
(labelled source validation split); on the unlabelled target validation split, the label-free
validators ``label_free/<name>`` (``evals.domain.VALIDATORS``), ``proxy_a_distance`` between the
two validation splits' bottleneck features and, for ``dann``, ``discriminator_accuracy``; and
``oracle/target_test_top1`` (the target test split, the only place target labels are read
outside ``train_on_target``). At the end, ``report`` chooses an eval step per rule (last,
source validation, each validator, oracle) from those rows and reports the target test
accuracy at each choice (``summary.json``: ``select/<rule>/step``,
``select/<rule>/target_test_top1``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from pydantic import Field

from jaxalign import evals, models
from jaxalign.data import ImageTransform, make_pipeline, zip_streams
from jaxalign.data.example_cache import MIB, ExampleCache
from jaxalign.evals import domain as domain_evals
from jaxalign.objectives import domain
from jaxalign.schema import (
    ConfigError,
    Count,
    Group,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)
from jaxalign.tasks import images
from jaxalign.tasks.base import ParamGroup, Task, register_task

METHODS = ("source_only", "dann", "mmd", "coral", "train_on_target")


class AdaptModel(images.ImageModel):
    bottleneck_dim: PositiveInt
    discriminator_hidden: PositiveInt
    backbone_lr_mult: Annotated[float, Field(ge=0.0)]


class AdaptData(Group):
    source: Literal["builtin", "tfds"]
    name: str
    data_dir: str
    source_split: str
    target_split: str
    label_key: str
    image_size: PositiveInt
    worker_count: Count
    prefetch: Count
    max_skipped_in_a_row: PositiveInt
    example_cache_mb: Count

    def rules(self) -> list[str]:
        return images.dataset_problems(self)


class AdaptObjective(Group):
    method: Literal[METHODS]  # type: ignore[valid-type]
    dann_weight: NonNegativeFloat
    mmd_weight: NonNegativeFloat
    coral_weight: NonNegativeFloat
    schedule: Literal["dann", "warm_start"]
    gamma: PositiveFloat
    warm_start_steps: PositiveInt
    discriminator_lr_mult: NonNegativeFloat
    mmd_estimator: Literal[domain.MMD_ESTIMATORS]  # type: ignore[valid-type]
    kernel_mults: tuple[PositiveFloat, ...]


class AdaptEvals(Group):
    source_validation: str
    target_validation: str
    target_test: str
    batch_size: PositiveInt
    max_examples: Count


class AdaptConfig(images.ImageTaskConfig):
    """The adaptation task's config (keys documented in ``configs/adapt_digits.py``)."""

    task: Literal["adapt"]
    model: AdaptModel
    data: AdaptData
    objective: AdaptObjective
    evals: AdaptEvals

    def rules(self) -> list[str]:
        problems = images.image_tower_problems(self.model, self.data.image_size)
        if self.optim.micro_batches != 1:
            problems.append(f"optim.micro_batches={self.optim.micro_batches}: must be 1 (adapt)")
        if self.objective.method == "mmd" and not self.objective.kernel_mults:
            problems.append("objective.kernel_mults=(): MMD needs at least one kernel")
        return problems


@functools.lru_cache(maxsize=8)
def _predictor(model: models.AdaptationNet) -> Any:
    """``(variables, batch) -> {"probs", "features", "domain"}``, jitted once per model (tasks
    of equal models, e.g. a seed bundle's, share the compiled program)."""

    def predict(variables, batch):
        logits, features = model.apply(variables, batch["image"])
        domain_logits = model.apply(variables, features, method=models.AdaptationNet.discriminate)
        return {"probs": jax.nn.softmax(logits), "features": features, "domain": domain_logits}

    return jax.jit(predict)


@register_task
class AdaptTask(Task):
    """Model, losses, data and evals of domain adaptation (see the module docstring)."""

    name = "adapt"
    Config = AdaptConfig

    def __init__(self, config: AdaptConfig, mesh: Mesh):
        self.config, self.mesh = config, mesh
        self.dataset = images.ImageDataset(config.data)
        self.method = config.objective.method
        self._caches: dict[tuple[str, bool, int], ExampleCache] = {}

    # --- data ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Builds a built-in dataset if needed and opens every split (ConfigError naming the
        key when one is missing)."""
        data, ev = self.config.data, self.config.evals
        self.dataset.prepare()
        self.dataset.source(data.target_split, key="data.target_split")
        for key in ("source_validation", "target_validation", "target_test"):
            self.dataset.source(getattr(ev, key), key=f"evals.{key}")
        if not self.class_names:
            raise ConfigError(f"config.data.label_key={data.label_key!r}: no classes")

    @functools.cached_property
    def class_names(self) -> list[str]:
        data = self.config.data
        return self.dataset.class_names(
            data.source_split, key="data.source_split", label_key=data.label_key
        )

    @property
    def reads_target_labels(self) -> bool:
        return self.method == "train_on_target"

    def transform(self, *, labelled: bool) -> ImageTransform:
        """Decode, resize and normalise (no augmentation); the label only when ``labelled``."""
        label_key = self.config.data.label_key if labelled else None
        return ImageTransform(self.config.data.image_size, train=False, label_key=label_key)

    def _source(self, split: str, key: str, *, labelled: bool, limit: int = 0) -> Any:
        source = self.dataset.source(split, key=key, limit=limit)
        return source if labelled else images.Unlabelled(source, (self.config.data.label_key,))

    def _cache(self, split: str, *, labelled: bool, limit: int = 0) -> ExampleCache | None:
        """The split's transformed examples, kept for every later epoch and eval of this run
        (``data.example_cache_mb`` per split; 0: none)."""
        size = self.config.data.example_cache_mb
        if not size:
            return None
        key = (split, labelled, limit)
        if key not in self._caches:
            self._caches[key] = ExampleCache(size * MIB)
        return self._caches[key]

    def _train_pipeline(self, split: str, key: str, *, labelled: bool, seed_offset: int) -> Any:
        data = self.config.data
        return make_pipeline(
            self._source(split, key, labelled=labelled),
            seed=(self.config.seed + seed_offset) % 2**32,
            global_batch_size=self.config.train.global_batch_size,
            transform=self.transform(labelled=labelled),
            cache=self._cache(split, labelled=labelled),
            worker_count=data.worker_count,
            prefetch=data.prefetch,
            max_skipped_in_a_row=data.max_skipped_in_a_row,
        )

    def train_stream(self) -> Any:
        """``{"source": labelled, "target": unlabelled}`` streams, each shuffled by its own
        seed (the target's is ``seed + 1``), zipped; resumes exactly."""
        data = self.config.data
        streams = {
            "source": self._train_pipeline(
                data.source_split, "data.source_split", labelled=True, seed_offset=0
            )
        }
        if self.method != "source_only":
            streams["target"] = self._train_pipeline(
                data.target_split,
                "data.target_split",
                labelled=self.reads_target_labels,
                seed_offset=1,
            )
        return zip_streams(streams)

    def batch_spec(self) -> dict[str, Any]:
        batch, size = self.config.train.global_batch_size, self.config.data.image_size
        image = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
        label = jax.ShapeDtypeStruct((batch,), jnp.int32)
        spec = {"source": {"image": image, "label": label}}
        if self.method != "source_only":
            spec["target"] = {
                "image": image,
                **({"label": label} if self.reads_target_labels else {}),
            }
        return spec

    # --- model ----------------------------------------------------------------------------------

    @functools.cached_property
    def model(self) -> models.AdaptationNet:
        m = self.config.model
        return models.AdaptationNet(
            images.image_tower(m),
            num_classes=len(self.class_names),
            bottleneck_dim=m.bottleneck_dim,
            discriminator_hidden=m.discriminator_hidden,
        )

    def init(self, rng: jax.Array) -> Any:
        size = self.config.data.image_size
        image = jnp.zeros((1, size, size, 3), jnp.float32)
        return self.model.init(rng, image, method=models.AdaptationNet.init_all)

    def reversal_coefficient(self, step: jax.Array) -> jax.Array:
        """The gradient-reversal coefficient at ``step`` (``objective.schedule``)."""
        objective = self.config.objective
        if objective.schedule == "dann":
            progress = step / self.config.train.steps
            return domain.reversal_coefficient(progress, gamma=objective.gamma)
        return domain.warm_start_schedule(
            alpha=objective.gamma, max_iters=objective.warm_start_steps
        )(step)

    def loss(self, params, model_state, batch, rng, step):
        """``CE(source) + weight * domain term`` over the global batch; metrics: the source
        batch's accuracy, the classification and domain terms, and for DANN the reversal
        coefficient and the discriminator's accuracy."""
        del rng  # no dropout in these models
        variables = {"params": params, **model_state}
        source_logits, source_features = self.model.apply(variables, batch["source"]["image"])
        labels = batch["source"]["label"]
        classification = _cross_entropy(source_logits, labels)
        metrics = {"accuracy": jnp.mean(jnp.argmax(source_logits, -1) == labels)}
        loss = classification
        if self.method != "source_only":
            target_logits, target_features = self.model.apply(variables, batch["target"]["image"])
            term, weight = self._domain_term(
                variables, source_features, target_features, target_logits, batch, step, metrics
            )
            loss = loss + weight * term
            metrics["domain_term"] = term
        metrics["classification"] = classification
        return loss, model_state, metrics

    def _domain_term(self, variables, source, target, target_logits, batch, step, metrics):
        objective, mesh = self.config.objective, self.mesh
        if self.method == "dann":
            coeff = self.reversal_coefficient(step)
            features = domain.gradient_reversal((source, target), coeff)
            discriminate = functools.partial(
                self.model.apply, variables, method=models.AdaptationNet.discriminate
            )
            term, accuracy = domain.domain_adversarial_loss(
                discriminate(features[0]), discriminate(features[1]), mesh=mesh
            )
            metrics.update(reversal_coefficient=coeff, discriminator_accuracy=accuracy)
            return term, objective.dann_weight
        if self.method == "mmd":
            term = domain.mmd(
                source,
                target,
                kernel_mults=objective.kernel_mults,
                estimator=objective.mmd_estimator,
                mesh=mesh,
            )
            return term, objective.mmd_weight
        if self.method == "coral":
            return domain.coral(source, target, mesh=mesh), objective.coral_weight
        return _cross_entropy(target_logits, batch["target"]["label"]), 1.0  # train_on_target

    def param_groups(self) -> tuple[ParamGroup, ...]:
        groups = []
        if self.config.model.backbone_lr_mult != 1:
            groups.append(ParamGroup("^backbone/", self.config.model.backbone_lr_mult))
        if self.config.objective.discriminator_lr_mult != 1:
            groups.append(
                ParamGroup("^discriminator/", self.config.objective.discriminator_lr_mult)
            )
        return tuple(groups)

    # --- evals ----------------------------------------------------------------------------------

    def _run(self, variables: Any, key: str, *, labelled: bool, progress: bool) -> dict[str, Any]:
        ev = self.config.evals
        split = getattr(ev, key)
        source = self._source(split, f"evals.{key}", labelled=labelled, limit=ev.max_examples)
        cache = self._cache(split, labelled=labelled, limit=ev.max_examples)
        transform = self.transform(labelled=labelled)
        pipeline = images.eval_pipeline(source, self.config, transform, cache=cache)
        return evals.embed_dataset(
            _predictor(self.model),
            pipeline,
            self.mesh,
            global_batch_size=ev.batch_size,
            keep=("label",) if labelled else (),
            params=variables,
            progress=progress,
            desc=f"adapt ({split})",
        )

    def evaluate(self, variables: Any, *, progress: bool = False) -> dict[str, float]:
        """See the module docstring; each split its first ``evals.max_examples`` (0: all)."""
        source = self._run(variables, "source_validation", labelled=True, progress=progress)
        target = self._run(variables, "target_validation", labelled=False, progress=progress)
        test = self._run(variables, "target_test", labelled=True, progress=progress)
        results = {"source_validation_top1": _top1(source["probs"], source["label"])}
        for name, score in domain_evals.label_free_scores(target["probs"]).items():
            results[f"label_free/{name}"] = score
        results["proxy_a_distance"] = domain_evals.proxy_a_distance(
            source["features"], target["features"]
        )
        if self.method == "dann":
            correct = np.concatenate([source["domain"] > 0, target["domain"] <= 0])
            results["discriminator_accuracy"] = float(np.mean(correct))
        results["oracle/target_test_top1"] = _top1(test["probs"], test["label"])
        return results

    def report(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Model selection over the run's eval rows: per rule the chosen step and the target
        test accuracy there (``select/<rule>/step``, ``select/<rule>/target_test_top1``)."""
        rules = {"last": "", "source_validation": "eval/source_validation_top1"}
        rules.update({name: f"eval/label_free/{name}" for name in domain_evals.VALIDATORS})
        rules["oracle"] = "eval/oracle/target_test_top1"
        chosen = domain_evals.select(rows, rules, report="eval/oracle/target_test_top1")
        out: dict[str, Any] = {}
        for rule, choice in chosen.items():
            out[f"select/{rule}/step"] = choice["step"]
            out[f"select/{rule}/target_test_top1"] = choice["value"]
        return out


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over the (global) batch: ``[b, classes] x [b] -> scalar``."""
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )


def _top1(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy, ties counted against the true class."""
    true = np.take_along_axis(probs, labels[:, None], axis=1)
    return float(np.mean(np.sum(probs >= true, axis=1) == 1))
