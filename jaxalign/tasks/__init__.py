"""Tasks: a model, its loss over the global batch, its data and its evals, one file per task,
registered by name (``config.task``). ``base.py`` holds the protocol the trainer calls and the
registry; ``images.py`` what image tasks share."""

from __future__ import annotations

from jaxalign.tasks.adapt import AdaptTask
from jaxalign.tasks.autoencoder import AutoencoderTask
from jaxalign.tasks.base import TASKS, ParamGroup, Task, get_task, register_task
from jaxalign.tasks.classify import ClassifyTask
from jaxalign.tasks.clip import ClipTask
from jaxalign.tasks.clip_adapt import ClipAdaptTask
from jaxalign.tasks.mae import MAETask
from jaxalign.tasks.mlm import MLMTask
from jaxalign.tasks.simclr import SimCLRTask

__all__ = [
    "TASKS",
    "AdaptTask",
    "AutoencoderTask",
    "ClassifyTask",
    "ClipAdaptTask",
    "ClipTask",
    "MAETask",
    "MLMTask",
    "ParamGroup",
    "SimCLRTask",
    "Task",
    "get_task",
    "register_task",
]
