"""Where a run's figures go: ``metrics.jsonl``, TensorBoard event files, a progress bar, log lines.

Only process 0 writes. ``metrics.jsonl`` has one JSON object per logged step (``step``, ``loss``,
``lr``, throughput, ...; eval rows carry keys prefixed ``eval/``). It is flushed after every row,
so a run killed at any time keeps every row it logged. When a run resumes from a checkpoint at
step ``s``, rows after ``s`` (logged after that checkpoint, before the crash) are dropped, so the
file reads as one uninterrupted run; TensorBoard drops its events after ``s`` the same way
(``purge_step``). Eval pictures (a task's ``eval_images``) go to ``images/<name>_step<step>.png``
and TensorBoard.

The work directory may be an object-store URI (``gs://...``, reached through ``etils.epath``): an
object cannot be appended to, so ``metrics.jsonl`` and the TensorBoard event files are written
in a local staging directory and copied whole to the URI at most every ``upload_seconds`` (30 by
default), after each eval picture, and at ``close`` (which a preempted run reaches too). A run
killed outright loses at most that many seconds of rows there, all logged after its last
checkpoint (a checkpoint's save takes longer), which a resumed run drops anyway.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from jaxalign.train_lib import run_files
from jaxalign.train_lib.workdir import is_uri

METRICS_FILE = "metrics.jsonl"
IMAGES_DIR = "images"  # eval pictures: <name>_step<step>.png
TENSORBOARD_DIR = "tensorboard"
UPLOAD_SECONDS = 30.0  # an object-store work directory: metrics copied there at most this often


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


def _lines(workdir: str | os.PathLike) -> list[str]:
    """The non-empty lines of ``workdir/metrics.jsonl`` ([] when there is none)."""
    path = run_files.path_of(workdir, METRICS_FILE)
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines(keepends=True) if line.strip()]


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``workdir/metrics.jsonl`` (local or a URI; [] when there is none). A last
    line cut short by a crash is left out; a bad line anywhere else raises, naming the file and
    line."""
    path = run_files.path_of(workdir, METRICS_FILE)
    lines = _lines(workdir)
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
    lines = _lines(workdir)
    rows = read_metrics(workdir)
    kept = [
        row
        for row in rows
        if row["step"] < step
        or (row["step"] == step and not (evals_at_step and any(k.startswith("eval/") for k in row)))
    ]
    if len(kept) != len(lines):
        run_files.write_text(workdir, METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    return len(lines) - len(kept)


def save_pngs(workdir: str | os.PathLike, step: int, images: Mapping[str, Any]) -> list[str]:
    """Writes each ``{name: [H, W, 3] uint8}`` as ``workdir/images/<name>_step<step>.png``
    (local or a URI); returns the paths."""
    from PIL import Image

    directory = run_files.path_of(workdir, IMAGES_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in images.items():
        png = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(png, format="PNG")
        path = directory / f"{name}_step{int(step)}.png"
        path.write_bytes(png.getvalue())
        paths.append(os.fspath(path))
    return paths


class MetricWriter:
    """Writes a run's metrics (see the module docstring).

    Args:
      workdir: the run's directory.
      total_steps: the run's last step (for the bar's ETA).
      start_step: the step the run starts (or resumes) from.
      progress: show a tqdm bar; ``None`` shows it when stderr is a terminal.
      upload_seconds: with a URI work directory, the longest time between two copies of the
        metrics there.

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
        upload_seconds: float = UPLOAD_SECONDS,
    ):
        self.enabled = jax.process_index() == 0
        self._file = None
        self._tensorboard = None
        self._bar = None
        self.workdir = os.fspath(workdir)
        self._remote = is_uri(self.workdir)
        self._upload_seconds = upload_seconds
        self._uploaded_at = -math.inf
        if not self.enabled:
            return
        # Written here; a URI work directory gets copies (see the module docstring).
        self._local = self._staging() if self._remote else self.workdir
        os.makedirs(self._local, exist_ok=True)
        # Rows after the starting point (all of them when a run killed before its first
        # checkpoint starts again) were logged by a run that did not reach a checkpoint.
        truncate_after(self._local, start_step, evals_at_step=start_step == total_steps)
        self._file = open(os.path.join(self._local, METRICS_FILE), "a")  # noqa: SIM115

        # One event file per writer: tensorboardX names it by the second and the host only,
        # so a run resumed within the same second would otherwise replace the last one's.
        self._tensorboard = _summary_writer_class()(
            os.path.join(self._local, TENSORBOARD_DIR),
            purge_step=start_step + 1,
            filename_suffix=f".{os.getpid()}.from{start_step}",
        )
        self._upload(force=True)  # the rows dropped above are dropped there too
        show = sys.stderr.isatty() if progress is None else progress
        self._bar = tqdm(
            total=total_steps, initial=start_step, unit="step", disable=not show, dynamic_ncols=True
        )

    def _staging(self) -> str:
        """A new local directory holding a copy of the URI's ``metrics.jsonl`` (if any)."""
        local = tempfile.mkdtemp(prefix="jaxalign-metrics-")
        source = run_files.path_of(self.workdir, METRICS_FILE)
        if source.exists():
            with open(os.path.join(local, METRICS_FILE), "wb") as f:
                f.write(source.read_bytes())
        return local

    def _upload(self, *, force: bool = False) -> None:
        """Copies ``metrics.jsonl`` and the event files to a URI work directory, when the last
        copy is ``upload_seconds`` old (or ``force``)."""
        now = time.monotonic()
        if not self._remote or not (force or now - self._uploaded_at >= self._upload_seconds):
            return
        self._uploaded_at = now
        run_files.path_of(self.workdir, METRICS_FILE).write_bytes(
            epath.Path(self._local, METRICS_FILE).read_bytes()
        )
        events = epath.Path(self._local, TENSORBOARD_DIR)
        target = run_files.path_of(self.workdir, TENSORBOARD_DIR)
        target.mkdir(parents=True, exist_ok=True)
        for path in events.iterdir() if events.exists() else []:
            (target / path.name).write_bytes(path.read_bytes())

    def rows(self) -> list[dict[str, Any]]:
        """The rows of this run's ``metrics.jsonl`` so far (process 0; [] on the others)."""
        return read_metrics(self._local) if self.enabled else []

    def log(self, message: str) -> None:
        """A line on stdout that does not break the progress bar."""
        if self.enabled:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def write(
        self, step: int, metrics: Mapping[str, Any], *, unfiled: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Appends ``{"step": step, **metrics}`` to ``metrics.jsonl`` and TensorBoard; the keys
        in ``unfiled`` go to TensorBoard only. Returns the whole row."""
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if not self.enabled:
            return row
        filed = {k: v for k, v in row.items() if k not in unfiled}
        self._file.write(json.dumps(filed) + "\n")
        self._file.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tensorboard.add_scalar(key, value, step)
        self._tensorboard.flush()
        self._upload()
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
        self._upload(force=True)
        return paths

    def advance(self, step: int, postfix: Mapping[str, str] | None = None) -> None:
        """Moves the progress bar to ``step``."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """Closes the files; a URI work directory gets its last copy and the local staging
        directory is removed."""
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._remote:
                self._upload(force=True)
                shutil.rmtree(self._local, ignore_errors=True)
