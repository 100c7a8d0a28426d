"""What the study scripts share (until ``jaxalign study`` exists): one run of a config preset per
seed in its own work directory, finished runs skipped, and the 95% Student-t interval of a mean.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

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


def run_parallel(jobs: int, runs: dict[Any, Callable[[], dict]]) -> dict[Any, dict]:
    """``{key: runs[key]()}``, ``jobs`` calls at a time (each a ``train``: a subprocess), a line
    printed as each finishes; the first failure cancels the runs not started yet and is
    raised."""
    results: dict[Any, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(run): key for key, run in runs.items()}
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            if future.exception() is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                raise future.exception()
            results[key] = future.result()
            name = " ".join(str(part) for part in (key if isinstance(key, tuple) else (key,)))
            print(
                f"[{len(results)}/{len(runs)}] {name}: {results[key]['wall_s']:.0f} s", flush=True
            )
    return results


def interval(values: list[float]) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)``: sample standard deviation (ddof 1) and the 95% Student-t
    interval of the mean (``jaxalign.studies.statistics``; ``nan`` for one value)."""
    from jaxalign.studies.statistics import summarize

    summary = summarize(values)
    return summary.mean, summary.std, summary.interval.low, summary.interval.high


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
