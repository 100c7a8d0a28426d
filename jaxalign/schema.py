"""Typed configs: the groups every task's config has, and the pieces task schemas are built from.

A config is a tree of pydantic models. Every ``Group`` forbids unknown keys, takes values of
exactly its fields' types (an ``int`` where a ``float`` is asked is fine; a string for a number,
or ``1`` for a bool, is not), refuses NaN and infinities, and is frozen once built. Fields have
no defaults: every value comes from the config file (``configs/*.py``), so a config read back
from ``config.json`` is the run's whole description.

``ExperimentConfig`` holds what the trainer itself reads, for every task:

- ``seed``; ``task`` (a name registered in ``jaxalign.tasks``);
- ``init_from``: parameters of a saved run to start from (``InitFromConfig``);
- ``optim`` (``OptimConfig``), ``train`` (``TrainConfig``), ``mesh`` (``MeshConfig``).

A task's config extends it with its own groups (``model``, ``data``, ``objective``, ``evals``)
and its cross-key rules (``rules``: no devices needed; ``topology_problems``: given the mesh;
``check_data``: the data is on disk). A rule's problem is one line that names the keys and
values, relative to the group that states the rule (``"train.global_batch_size=13: ..."`` on
the whole config); ``jaxalign.config`` prefixes the group's place (``config.``) and collects
every problem into one ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
import pydantic_core
from pydantic import Field

from jaxalign.errors import ConfigError as ConfigError  # re-exported: schema's errors
from jaxalign.errors import MissingDataError as MissingDataError
from jaxalign.parallel.mesh import BATCH_AXES


class Group(pydantic.BaseModel):
    """A group of config keys: strict types, no unknown keys, no NaN / inf, frozen."""

    model_config = pydantic.ConfigDict(
        extra="forbid", strict=True, frozen=True, allow_inf_nan=False
    )

    def rules(self) -> list[str]:
        """Problems across this group's keys (one line each, keys relative to the group)."""
        return []

    @pydantic.model_validator(mode="after")
    def check_rules_(self) -> Group:
        problems = self.rules()
        if problems:
            raise ValueError("\n".join(problems))
        return self


PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Unit = Annotated[float, Field(ge=0.0, lt=1.0)]  # [0, 1)
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]  # [0, 1]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


def _mesh_size(size: int) -> int:
    if size < 1 and size != -1:
        raise ValueError("must be a positive integer or -1 (the devices the other axes leave)")
    return size


MeshSize = Annotated[int, pydantic.AfterValidator(_mesh_size)]


@dataclasses.dataclass(frozen=True)
class ModuleFields:
    """Marks a ``dict`` of fields that override a model module's defaults (``model.image``).

    Each key must be a field of one of ``modules`` (``("jaxalign.models.vit", "ViT")``, ...)
    and not ``reserved`` (fields another key sets, with that key); each value must have the
    type of the field's default. Used as ``Annotated[dict[str, Any], ModuleFields(...)]``.
    """

    modules: tuple[tuple[str, str], ...]
    reserved: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """``{field name: default}`` over ``modules`` (flax's ``parent`` and ``name`` left out)."""
        out: dict[str, Any] = {}
        for path, name in self.modules:
            module = getattr(importlib.import_module(path), name)
            for field in dataclasses.fields(module):
                if field.name in ("parent", "name") or field.default is dataclasses.MISSING:
                    continue
                out.setdefault(field.name, field.default)
        return out

    def choices(self) -> list[str]:
        return sorted(set(self.fields()) - set(self.reserved))

    def check(self, values: dict[str, Any]) -> dict[str, Any]:
        fields, problems, out = self.fields(), [], {}
        for key, value in values.items():
            default = fields.get(key)
            if isinstance(value, list) and isinstance(default, tuple):
                value = tuple(value)  # JSON has no tuples
            out[key] = value
            if key in self.reserved:
                problems.append(f"{key}={value!r}: set by config.{self.reserved[key]}, not here")
            elif key not in fields:
                problems.append(f"{key}={value!r}: unknown field; choose from {self.choices()}")
            elif default is not None and not is_a(value, type(default)):
                problems.append(
                    f"{key}={value!r}: expected {type(default).__name__} (default {default!r})"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return out

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return pydantic_core.core_schema.no_info_after_validator_function(
            self.check, handler(source)
        )


def is_a(value: Any, kind: type) -> bool:
    """``isinstance`` as configs mean it: an int is a float, a bool is not an int."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, kind)


# --- the groups every task has -----------------------------------------------------------------


class OptimConfig(Group):
    """``name``: AdamW (``b1``, ``b2``, ``eps``) or LARS (momentum ``b1``; trust ratio and decay on
    the ``decay_mask`` parameters, as SimCLR), at ``lr`` with ``warmup_steps`` of linear warmup from
    0, then cosine decay to ``lr * min_lr_ratio``; global-norm clipping at ``clip_norm`` (0: off);
    ``micro_batches`` (a task's gradient accumulation; 1: off); ``max_nonfinite_in_a_row`` skipped
    non-finite updates stop the run; ``ema_decay``: an exponential moving average of the parameters,
    used by the evals (0: off)."""

    name: Literal["adamw", "lars"]
    lr: PositiveFloat
    warmup_steps: Count
    min_lr_ratio: Fraction
    weight_decay: NonNegativeFloat
    b1: Unit
    b2: Unit
    eps: PositiveFloat
    clip_norm: NonNegativeFloat
    micro_batches: PositiveInt
    max_nonfinite_in_a_row: PositiveInt
    ema_decay: Unit


class TrainConfig(Group):
    """The global batch (all devices and hosts), the step count, and the cadences (the last
    step always checkpoints and evaluates); ``max_failed_saves`` checkpoint saves failing in a
    row (a full disk) stop the run. ``timing_in_metrics``: the wall-clock figures of each
    logged step (``steps_per_s``, ``examples_per_s``, ``flops_per_s_per_device``, ``mfu``,
    ``input_wait_share``, ``loss_share``) go into ``metrics.jsonl`` too; with False they go to
    TensorBoard, the log lines and ``summary.json``'s means only, and ``metrics.jsonl`` is a
    function of the config, the data and the software alone (the same bytes when a CPU run is
    repeated; studies use it)."""

    global_batch_size: PositiveInt
    steps: PositiveInt
    log_every: PositiveInt
    checkpoint_every: PositiveInt
    keep_checkpoints: PositiveInt
    eval_every: PositiveInt
    max_failed_saves: PositiveInt
    timing_in_metrics: bool


class MeshConfig(Group):
    """Sizes of the mesh axes ``data``, ``fsdp``, ``tensor``; one may be -1 (the rest)."""

    data: MeshSize
    fsdp: MeshSize
    tensor: MeshSize


class InitFromConfig(Group):
    """Start from the parameters of a saved run (transfer), not from ``seed``'s init.

    ``workdir``: the run's work directory (``""``: off); ``step``: its checkpoint (``None``: the
    newest); ``params``: which parameters, as ``"SOURCE->TARGET"`` subtree paths joined by
    ``/`` (``"image_tower->backbone"`` puts a CLIP run's image tower into a classifier's
    backbone; a bare ``"backbone"`` keeps the name); empty: every parameter, same names. Only
    parameters (and the model state under the same subtrees) are read, never optimizer state;
    the run's parameters themselves, not their moving average (``ema_params``). The path is
    saved absolute (a URI, ``gs://...``, as it is); once the new run has a checkpoint of its
    own, ``init_from`` is no longer read (the source may move) and may change on resume.
    """

    workdir: str
    step: Annotated[int, Field(ge=0)] | None
    params: tuple[str, ...]

    def rules(self) -> list[str]:
        problems = []
        if not self.workdir and (self.params or self.step is not None):
            problems.append(
                f"workdir='': init_from.params={self.params!r} and init_from.step="
                f"{self.step!r} need the run to read them from"
            )
        for item in self.params:
            parts = [p.strip() for p in item.split("->")]
            if (
                len(parts) > 2
                or not all(parts)
                or any(not s or s.startswith("/") or s.endswith("/") for s in parts)
            ):
                problems.append(
                    f"params={self.params!r}: {item!r} is not 'SOURCE->TARGET' or 'PATH' "
                    "(paths of parameter subtrees, '/' between names)"
                )
        return problems or self.targets_problems()

    def targets_problems(self) -> list[str]:
        """Two mappings may not write the same parameters (one target inside another)."""
        targets = [dst for _, dst in self.mapping()]
        return [
            f"params={self.params!r}: {a!r} and {b!r} map onto the same parameters"
            for i, a in enumerate(targets)
            for b in targets[i + 1 :]
            if a == b or a.startswith(b + "/") or b.startswith(a + "/") or not a or not b
        ]

    def mapping(self) -> list[tuple[str, str]]:
        """``[(source path, target path)]``; ``[("", "")]`` (everything) when ``params`` is
        empty."""
        if not self.params:
            return [("", "")]
        pairs = []
        for item in self.params:
            parts = [p.strip() for p in item.split("->")]
            pairs.append((parts[0], parts[-1]))
        return pairs


class ExperimentConfig(Group):
    """What the trainer reads, for every task; a task's ``Config`` extends it (see the module
    docstring)."""

    seed: Annotated[int, Field(ge=0, lt=2**32)]
    task: str
    init_from: InitFromConfig
    optim: OptimConfig
    train: TrainConfig
    mesh: MeshConfig

    def topology_problems(self, mesh_shape: Mapping[str, int]) -> list[str]:
        """Problems of this config on a mesh of ``mesh_shape`` (``{axis: size}``): the global
        batch must split over the batch shards times ``optim.micro_batches``."""
        micro = self.optim.micro_batches
        return shard_problems(
            "train.global_batch_size",
            self.train.global_batch_size,
            mesh_shape,
            times=(micro, f"optim.micro_batches ({micro})"),
        )

    def check_data(self) -> None:
        """Raises ``MissingDataError`` naming the key when the config's data is not on disk (a
        task checks its datasets; the run ``init_from`` names is checked when it is read)."""


def batch_shards(mesh_shape: Mapping[str, int]) -> int:
    """How many pieces a batch is cut into on a mesh of this shape (``data`` x ``fsdp``)."""
    return math.prod(mesh_shape.get(axis, 1) for axis in BATCH_AXES)


def shard_problems(
    key: str, batch: int, mesh_shape: Mapping[str, int], times: tuple[int, str] = (1, "")
) -> list[str]:
    """``[]`` when the batch size ``batch`` (the value of ``key``) splits over the batch
    shards of the mesh (times ``times[0]``, named ``times[1]``), else the problem's line."""
    shards = batch_shards(mesh_shape)
    factor, name = times
    if batch % (factor * shards) == 0:
        return []
    also = f"{name} x " if name else ""
    return [
        f"{key}={batch}: must be a multiple of {also}the batch shards (mesh data x fsdp = "
        f"{shards}, mesh {dict(mesh_shape)})"
    ]
