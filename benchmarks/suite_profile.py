"""Where the test suite's time goes, per test and per compiled program.

A pytest plugin records, per test, its wall time and the seconds jax spent tracing, lowering and
compiling in the test's own process (by program name); ``main`` summarises the records. Child
processes (trainers, multi-process launches) are not seen: their time shows only in their
test's wall time. jax times a program's compile around its compilation-cache lookup, so a
program read from the persistent cache counts as a compile (of the read's duration), and a
nested ``jit`` is traced, and counted, within its caller's trace as well.

    PYTHONPATH=benchmarks python -m pytest -q -p suite_profile      # writes SUITE_PROFILE_DIR
    python benchmarks/suite_profile.py                                # the tables, Markdown

Each pytest process (each xdist worker) writes ``<dir>/<worker>.json`` at the end of the session;
the directory is ``$SUITE_PROFILE_DIR``, by default ``/tmp/suite_profile``; the session's main
process empties it first, so the summary reads one run. The records use
``jax.monitoring``'s duration events (``/jax/core/compile/backend_compile_duration`` with the
program's ``fun_name``, and the tracing and lowering events), so nothing about the tests changes.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import time
import warnings
from typing import Any

import pytest

DEFAULT_DIR = "/tmp/suite_profile"
COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"

_records: dict[str, dict[str, Any]] = {}
_current: dict[str, Any] | None = None
_listening = False


def _listen(event: str, duration: float, **kwargs: Any) -> None:
    """jax's duration listener: adds ``duration`` to the running test's record. Called from
    whichever thread compiles (a background save's too), so it reads the record once and never
    raises into jax."""
    record = _current
    if record is None or event not in (COMPILE, TRACE, LOWER):
        return
    try:
        if event == COMPILE:
            name = str(kwargs.get("fun_name", "?"))
            seconds, count = record["programs"].get(name, (0.0, 0))
            record["programs"][name] = (seconds + duration, count + 1)
        key = event.rsplit("/", 1)[-1].removesuffix("_duration")
        record[key] = record.get(key, 0.0) + duration
    except Exception:  # a profile must never fail a test
        pass


def _directory() -> str:
    return os.environ.get("SUITE_PROFILE_DIR", DEFAULT_DIR)


def _worker(config: Any) -> str | None:
    """This process's xdist worker id (``gw0``, ...), or None in pytest's main process. Read
    from the config, not the environment: a pytest started by a test inherits its worker's."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else None


def pytest_sessionstart(session: Any) -> None:
    """The main process (not an xdist worker) empties the directory of an earlier run's
    records."""
    if _worker(session.config) is None:
        for path in glob.glob(os.path.join(_directory(), "*.json")):
            os.remove(path)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: Any, nextitem: Any) -> None:
    """Starts a test's record (pytest's hook; the test runs after it returns)."""
    global _current, _listening
    import jax

    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_listen)
        _listening = True
    _current = {"programs": {}, "start": time.perf_counter()}
    _records[item.nodeid] = _current


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    """Ends the test's record (pytest's hook, after its teardown)."""
    global _current
    record = _records.get(nodeid)
    if record is not None and "start" in record:
        record["wall"] = time.perf_counter() - record.pop("start")
    _current = None


def pytest_sessionfinish(session: Any) -> None:
    """Writes this process's records (none from an xdist controller, which runs no test); a
    failed write warns and leaves the run's outcome alone."""
    if not _records:
        return
    path = os.path.join(_directory(), f"{_worker(session.config) or 'main'}.json")
    try:
        os.makedirs(_directory(), exist_ok=True)
        with open(path, "w") as f:
            json.dump(_records, f)
    except OSError as error:
        warnings.warn(f"suite_profile: could not write {path}: {error}", stacklevel=1)


def summarize(directory: str, top: int) -> str:
    """Markdown tables from the workers' records in ``directory``."""
    tests: dict[str, dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as f:
            tests.update(json.load(f))
    if not tests:
        raise SystemExit(f"no records in {directory}: run pytest with -p suite_profile first")
    programs: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    files: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for nodeid, record in tests.items():
        for name, (seconds, count) in record["programs"].items():
            programs[name][0] += seconds
            programs[name][1] += count
        row = files[nodeid.split("::")[0]]
        row[0] += record.get("wall", 0.0)
        row[1] += record.get("backend_compile", 0.0)
        row[2] += 1
    wall = sum(r.get("wall", 0.0) for r in tests.values())
    totals = {k: sum(r.get(k, 0.0) for r in tests.values()) for k in
              ("backend_compile", "jaxpr_trace", "jaxpr_to_mlir_module")}  # fmt: skip
    lines = [
        f"{len(tests)} tests, {wall:.0f} s of test time over the workers; in the tests' own "
        f"processes: {totals['backend_compile']:.0f} s compiling, "
        f"{totals['jaxpr_trace']:.0f} s tracing, {totals['jaxpr_to_mlir_module']:.0f} s lowering",
        "",
        "| program | compiles | compile s |",
        "|---|---|---|",
    ]
    for name, (seconds, count) in sorted(programs.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{name}` | {count} | {seconds:.1f} |")
    lines += ["", "| file | tests | test s | compile s (in process) |", "|---|---|---|---|"]
    for name, (seconds, compiling, count) in sorted(files.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{name}` | {count} | {seconds:.1f} | {compiling:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Summarise the suite_profile plugin's records.")
    parser.add_argument("--dir", default=_directory())
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    args = parser.parse_args()
    print(summarize(args.dir, args.top))


if __name__ == "__main__":
    main()
