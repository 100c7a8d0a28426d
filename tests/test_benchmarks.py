"""``benchmarks/accelerator.sh --cpu-smoke``: the accelerator benchmark's own code, end to end on
tiny shapes on CPU, as CI runs it; its tables are filled with measured numbers. And
``benchmarks/suite_profile.py``, the test-time profiler, in a pytest run of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r"[\d,]+(?:\.\d+)?"


def _rows(report: str, heading: str) -> list[list[str]]:
    """The data rows of the table under the ``## heading...`` line."""
    section = report.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_accelerator_benchmark_smoke_run_fills_its_tables(tmp_path):
    out = tmp_path / "accelerator.md"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    script = os.path.join(ROOT, "benchmarks", "accelerator.sh")
    result = subprocess.run(
        ["bash", script, "--cpu-smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert all(line in result.stdout for line in report.splitlines())  # the same on stdout
    assert "error" not in report and "skipped" not in report, report

    (step,) = _rows(report, "Train step")
    assert step[:3] == ["tiny", "16", "bfloat16"]
    assert all(re.fullmatch(NUMBER, cell) for cell in step[3:7]), step  # images/s .. TFLOP/s
    assert step[7].startswith("- (unknown device)") and step[8] == "-"  # no peak for a CPU

    losses = _rows(report, "Largest loss batch")
    assert [row[0] for row in losses] == ["naive", "tiled", "ring"]
    for impl, batch, gib, ms in losses:
        assert re.fullmatch(NUMBER + r"(?: \(search's cap\))?", batch), (impl, batch)
        assert float(gib) <= 0.25 and float(ms.replace(",", "")) > 0, (impl, gib, ms)

    (pipeline,) = _rows(report, "Input pipeline")
    assert pipeline[0] == "0" and float(pipeline[1].replace(",", "")) > 0


INNER_TEST = """
import jax
import jax.numpy as jnp


def test_compiles_a_named_program():
    def doubled(x):
        return 2 * x

    assert float(jax.jit(doubled)(jnp.ones(()))) == 2.0
"""


def test_suite_profile_records_each_test_and_its_compiled_programs(tmp_path):
    """``benchmarks/suite_profile.py`` in a pytest run of its own (one process, jax on CPU):
    a stale record is cleared, the test's compile of ``jit(doubled)`` is recorded and summed."""
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    records = tmp_path / "records"
    records.mkdir()
    (records / "stale.json").write_text('{"old::test": {"programs": {}, "wall": 1.0}}')
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SUITE_PROFILE_DIR": str(records),
           "PYTHONPATH": os.path.join(ROOT, "benchmarks")}  # fmt: skip
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compile, do not read the session's cache
    inner = [sys.executable, "-m", "pytest", "-q", "-p", "suite_profile",
             "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(tmp_path),
             str(tmp_path / "test_inner.py")]  # fmt: skip
    result = subprocess.run(
        inner, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in records.iterdir()) == ["main.json"]
    script = os.path.join(ROOT, "benchmarks", "suite_profile.py")
    summary = subprocess.run(
        [sys.executable, script, "--dir", str(records)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert summary.startswith("1 tests,"), summary
    assert re.search(r"\| `jit\(doubled\)` \| 1 \| " + NUMBER + r" \|", summary), summary
    assert re.search(r"\| `test_inner.py` \| 1 \| ", summary), summary
