"""What the study scripts share (until ``jaxalign study`` exists): one run of a config preset per
seed in its own work directory, finished runs skipped, and the 95% Student-t interval of a mean.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finished(workdir: str) -> dict | None:
    """The run's ``summary.json`` when it finished (``stopped`` is None), else None."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    return summary if summary.get("stopped") is None else None


def train(spec: str, workdir: str, seed: int, overrides: list[str]) -> dict:
    """``jaxalign train --config=<ROOT>/<spec> --workdir=... --config.seed=<seed>`` unless the
    run already finished (an unfinished one resumes); returns its summary, with ``wall_s``
    the seconds this call took (0 when skipped). Raises RuntimeError with the run's stderr."""
    summary = finished(workdir)
    if summary is not None:
        return {**summary, "wall_s": 0.0}
    command = [
        sys.executable,
        "-m",
        "jaxalign",
        "train",
        f"--config={ROOT}/{spec}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *[f"--config.{o}" for o in overrides],
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return {**finished(workdir), "wall_s": time.perf_counter() - started}


def interval(values: list[float]) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)``: sample standard deviation (ddof 1) and the 95% Student-t
    interval of the mean, ``mean +- t_{0.975, n-1} std / sqrt(n)`` (``nan`` for one value)."""
    from scipy import stats

    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan, math.nan
    std = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def cell(values: list[float], scale: float = 100.0) -> str:
    """``"mean ± std [low, high]"`` of ``values`` times ``scale``, one decimal."""
    mean, std, low, high = interval([scale * v for v in values])
    return f"{mean:.1f} ± {std:.1f} [{low:.1f}, {high:.1f}]"


def publish(report: str, out: str | None) -> None:
    """Prints the Markdown ``report`` and, with ``out``, writes it there too."""
    print(report)
    if out:
        with open(out, "w") as f:
            f.write(report)
