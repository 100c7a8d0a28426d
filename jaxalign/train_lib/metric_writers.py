"""Where a run's figures go: ``metrics.jsonl``, TensorBoard event files, a progress bar, log lines.

Only process 0 writes. ``metrics.jsonl`` has one JSON object per logged step (``step``, ``loss``,
``lr``, throughput, ...; eval rows carry keys prefixed ``eval/``). It is flushed after every row,
so a run killed at any time keeps every row it logged. When a run resumes from a checkpoint at
step ``s``, rows after ``s`` (logged after that checkpoint, before the crash) are dropped, so the
file reads as one uninterrupted run; TensorBoard drops its events after ``s`` the same way
(``purge_step``). Eval pictures (a task's ``eval_images``) go to ``images/<name>_step<step>.png``
and TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
IMAGES_DIR = "images"  # eval pictures: <name>_step<step>.png


def _summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    When torch is installed, tensorboardX imports it only to name ``torch.Tensor`` in type
    hints, which adds more than a second to every run's start (1.2 s on the CI machine); this
    writer passes Python numbers and NumPy arrays. ``import torch`` fails while tensorboardX
    loads (in every thread, for that moment) and works as usual afterwards; a torch imported
    before is left alone.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # ``import torch``: ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _plain(value: Any) -> Any:
    """A JSON value: Python scalars as they are, 0-d arrays as float / int / bool."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # NaN is not JSON
    item = getattr(value, "item", None)
    if item is not None:
        return _plain(item())
    raise TypeError(f"metric value {value!r} ({type(value).__name__}) is not a scalar")


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``workdir/metrics.jsonl`` ([] when there is none). A last line cut short by
    a crash is left out; a bad line anywhere else raises, naming the file and line."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the write the crash interrupted
                break
            raise ValueError(f"{path}, line {number}: not a JSON row ({error})") from None
    return rows


def truncate_after(workdir: str | os.PathLike, step: int, *, evals_at_step: bool = False) -> int:
    """Drops the rows of ``metrics.jsonl`` logged after ``step`` (and, with ``evals_at_step``,
    the eval rows of ``step`` itself, about to be written again); returns how many went. The
    file is rewritten (without a torn last line) whenever it is not already exactly the kept
    rows."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    rows = read_metrics(workdir)
    kept = [
        row
        for row in rows
        if row["step"] < step
        or (row["step"] == step and not (evals_at_step and any(k.startswith("eval/") for k in row)))
    ]
    if len(kept) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in kept)
        os.replace(path + ".tmp", path)
    return len(lines) - len(kept)


def save_pngs(workdir: str | os.PathLike, step: int, images: Mapping[str, Any]) -> list[str]:
    """Writes each ``{name: [H, W, 3] uint8}`` as ``workdir/images/<name>_step<step>.png``;
    returns the paths."""
    from PIL import Image

    os.makedirs(os.path.join(workdir, IMAGES_DIR), exist_ok=True)
    paths = []
    for name, image in images.items():
        path = os.path.join(workdir, IMAGES_DIR, f"{name}_step{int(step)}.png")
        Image.fromarray(np.asarray(image, np.uint8)).save(path)
        paths.append(path)
    return paths


class MetricWriter:
    """Writes a run's metrics (see the module docstring).

    Args:
      workdir: the run's directory.
      total_steps: the run's last step (for the bar's ETA).
      start_step: the step the run starts (or resumes) from.
      progress: show a tqdm bar; ``None`` shows it when stderr is a terminal.

    A run resumed at its last step (finished before) evaluates again: its old final eval row
    is replaced, not doubled.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        total_steps: int,
        start_step: int,
        progress: bool | None = None,
    ):
        self.enabled = jax.process_index() == 0
        self._file = None
        self._tensorboard = None
        self._bar = None
        self.workdir = os.fspath(workdir)
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        # Rows after the starting point (all of them when a run killed before its first
        # checkpoint starts again) were logged by a run that did not reach a checkpoint.
        truncate_after(workdir, start_step, evals_at_step=start_step == total_steps)
        self._file = open(os.path.join(workdir, METRICS_FILE), "a")  # noqa: SIM115

        self._tensorboard = _summary_writer_class()(
            os.path.join(workdir, "tensorboard"), purge_step=start_step + 1
        )
        show = sys.stderr.isatty() if progress is None else progress
        self._bar = tqdm(
            total=total_steps, initial=start_step, unit="step", disable=not show, dynamic_ncols=True
        )

    def log(self, message: str) -> None:
        """A line on stdout that does not break the progress bar."""
        if self.enabled:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Appends ``{"step": step, **metrics}`` to ``metrics.jsonl`` and TensorBoard."""
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if not self.enabled:
            return row
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tensorboard.add_scalar(key, value, step)
        self._tensorboard.flush()
        return row

    def write_images(self, step: int, images: Mapping[str, Any]) -> list[str]:
        """Writes each ``{name: [H, W, 3] uint8}`` as ``images/<name>_step<step>.png`` in the
        work directory and to TensorBoard; returns the paths written."""
        if not self.enabled or not images:
            return []
        paths = save_pngs(self.workdir, step, images)
        for name, image in images.items():
            self._tensorboard.add_image(name, np.asarray(image, np.uint8), step, dataformats="HWC")
        self._tensorboard.flush()
        return paths

    def advance(self, step: int, postfix: Mapping[str, str] | None = None) -> None:
        """Moves the progress bar to ``step``."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._file is not None:
            self._file.close()
