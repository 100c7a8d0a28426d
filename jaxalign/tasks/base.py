"""The task protocol: everything the one training loop knows about a task, and the registry.

A task is a model, its loss over the global batch, its data and its evals. The trainer
(``jaxalign.train``) builds it as ``TASKS[config.task](config, mesh)`` and calls only the
members of ``Task``; ``jaxalign.config`` validates a config with the task's ``Config``. A new
task is a class with these members, registered with ``@register_task`` (in a module that is
imported, or in the config file that uses it): nothing in the trainer, ``config.py`` or
``train_lib/`` changes.

Shapes and mesh axes. A batch is any pytree of arrays whose leaves share a leading batch axis:
``[B, ...]`` over all processes, split over the mesh's batch axes (``data``, ``fsdp``); a task
with several streams nests them (``{"source": {"image": [B, S, S, 3], "label": [B]},
"target": {"image": [B, S, S, 3]}}``). ``batch_spec`` gives the global shapes as
``jax.ShapeDtypeStruct``s: init and compilation work from them, so no global batch is ever
built. The train stream yields each process's share (``[B / process_count, ...]``).

The step. For step ``s`` (``s`` updates done before it: 0 for the first), the trainer calls
``loss_and_grad(params, model_state, batch, rng, s)`` with ``rng = fold_in(key(seed), s)``, the
same on every device and process (docs/architecture.md, principle 6); the default takes
``jax.grad`` of ``loss``. ``model_state`` holds the non-parameter collections
(``{"batch_stats": ...}``; ``{}`` for a model without any) and the loss returns its new value.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol

import jax
from jax.sharding import Mesh

from jaxalign.schema import ConfigError, ExperimentConfig

Variables = dict[str, Any]  # {"params": ..., other collections}
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Parameters whose path (names joined by ``/``, e.g. ``backbone/conv_0/conv/kernel``)
    matches the regular expression ``pattern`` (``re.search``) train at the learning rate
    times ``lr_mult``; ``lr_mult=0`` freezes them: no update, no weight decay, no optimizer
    state. The first matching group wins; unmatched parameters have ``lr_mult=1``."""

    pattern: str
    lr_mult: float

    def __post_init__(self) -> None:
        if self.lr_mult < 0:
            raise ValueError(f"ParamGroup({self.pattern!r}): lr_mult={self.lr_mult} is negative")


class Task(Protocol):
    """What a task gives the trainer. Subclass it to inherit the defaults of the optional
    members (``prepare_data``, ``loss_and_grad``, ``objective_probe``, ``param_groups``,
    ``evaluate``, ``report``)."""

    name: ClassVar[str]
    """The name configs use (``config.task``)."""
    Config: ClassVar[type[ExperimentConfig]]
    """The typed config: ``ExperimentConfig`` plus the task's groups and cross-key rules."""
    config: Any
    mesh: Mesh

    def prepare_data(self) -> None:
        """Builds or checks what the data needs on disk, and opens every eval split so a
        missing one fails (ConfigError naming the key) before anything compiles. Runs on every
        process."""

    def train_stream(self) -> Iterable[Any]:
        """This process's endless stream of training batches: an iterable whose iterator has
        ``get_state() -> JSON`` and ``set_state(state)`` (exact resume) and ``close()``; each
        batch a pytree of numpy arrays ``[B / process_count, ...]`` (see ``batch_spec``)."""
        ...

    def batch_spec(self) -> Any:
        """The global batch's pytree of ``jax.ShapeDtypeStruct([B, ...], dtype)``, B =
        ``config.train.global_batch_size``."""
        ...

    def init(self, rng: jax.Array) -> Variables:
        """``{"params": ..., other collections}`` with their logical axis names kept
        (``nn.LogicallyPartitioned``, for sharded init), from shapes alone (a batch of one,
        never the global batch)."""
        ...

    def load_pretrained(self, params: Any) -> tuple[Any, str]:
        """Parameters from outside jaxalign (e.g. a Hugging Face checkpoint the config names)
        in place of their initial values: given the initialised ``params``, returns ``(params,
        a note for the log)``, the replaced leaves as host arrays of the same shapes, which the
        trainer puts into the state's shardings. Called on every process when a run starts
        without a checkpoint of its own, before ``config.init_from``. By default nothing is
        loaded (``(params, "")``)."""
        return params, ""

    def loss(
        self, params: Any, model_state: Any, batch: Any, rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Any, Metrics]:
        """``(scalar loss over the global batch, new model_state, metrics)``; pure, traced
        once inside the jitted step; metrics are scalars."""
        ...

    def loss_and_grad(
        self, params: Any, model_state: Any, batch: Any, rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Any, Any, Metrics]:
        """``(loss, grads like params, new model_state, metrics)``. Override to compute the
        gradient another way (CLIP's cached-gradient accumulation)."""
        (loss, (model_state, metrics)), grads = jax.value_and_grad(
            lambda p: _loss_with_aux(self, p, model_state, batch, rng, step), has_aux=True
        )(params)
        return loss, grads, model_state, metrics

    def objective_probe(self) -> tuple[Callable[[Any], jax.Array], Any] | None:
        """The step's batch objective alone, for the ``loss_share`` the trainer logs:
        ``(fn, inputs)`` with ``fn(inputs) -> scalar`` the loss the step computes from the
        model's outputs (CLIP: InfoNCE of two ``[B, D]`` embeddings, over the mesh) and
        ``inputs`` those outputs' global shapes, a pytree of ``jax.ShapeDtypeStruct`` with
        their shardings. The trainer times ``jax.value_and_grad(fn)`` once at start-up
        (``train_lib.throughput.objective_seconds``). None (the default): no loss share."""
        return None

    def param_groups(self) -> Sequence[ParamGroup]:
        """Learning-rate multipliers and frozen parameters, by path (none by default)."""
        return ()

    def evaluate(self, variables: Variables, *, progress: bool = False) -> dict[str, float]:
        """The task's evals of ``variables`` (``{"params": ..., **model_state}``; the moving
        average of the parameters when ``optim.ema_decay > 0``), as ``{name: value}``; written
        with an ``eval/`` prefix. None by default."""
        return {}

    def eval_images(self, variables: Any) -> dict[str, Any]:
        """Pictures of the evals of ``variables`` (as ``evaluate``), ``{name: [H, W, 3]
        uint8}`` (e.g. inputs above their reconstructions); the trainer writes each as
        ``images/<name>_step<step>.png`` in the work directory and to TensorBoard. None by
        default."""
        return {}

    def report(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Figures for ``summary.json`` drawn from the finished run's logged rows (every row
        of ``metrics.jsonl``: ``{"step": s, ...}``, eval rows with ``eval/`` keys), e.g. model
        selection over its evals. None by default."""
        return {}


def _loss_with_aux(task: Task, params, model_state, batch, rng, step):
    loss, model_state, metrics = task.loss(params, model_state, batch, rng, step)
    return loss, (model_state, metrics)


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: makes ``cls`` the task named ``cls.name``. Registering a name again
    replaces it only with a class of the same name from the same file (a config file loaded
    twice); any other clash raises ValueError."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"task class {cls.__qualname__} needs a `name` (the config's task)")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, ExperimentConfig)):
        raise ValueError(f"task {name!r}: `Config` must subclass jaxalign.schema.ExperimentConfig")
    old = TASKS.get(name)
    if old is not None and old is not cls and _origin(old) != _origin(cls):
        raise ValueError(f"task {name!r} is already registered by {_origin(old)}")
    TASKS[name] = cls
    return cls


def _origin(cls: type) -> tuple[str, str]:
    try:
        return inspect.getfile(cls), cls.__qualname__
    except TypeError:
        return cls.__module__, cls.__qualname__


def get_task(config: ExperimentConfig, mesh: Mesh) -> Task:
    """The task ``config.task`` names, built for ``mesh``."""
    if config.task not in TASKS:
        raise ConfigError(f"config.task={config.task!r}: unknown task; choose from {sorted(TASKS)}")
    return TASKS[config.task](config, mesh)
