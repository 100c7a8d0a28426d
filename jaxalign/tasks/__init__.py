"""Tasks: a model, its loss over the global batch, its data and its evals, one file per task,
registered by name (``config.task``)."""

from __future__ import annotations

from typing import Any

from jaxalign.tasks.clip import ClipTask

TASKS: dict[str, type] = {"clip": ClipTask}


def get_task(config: Any) -> Any:
    """The task ``config.task`` names, built from the config."""
    if config.task not in TASKS:
        raise ValueError(f"config.task: unknown task {config.task!r}; choose from {sorted(TASKS)}")
    return TASKS[config.task](config)


__all__ = ["TASKS", "ClipTask", "get_task"]
