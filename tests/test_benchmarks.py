"""``benchmarks/accelerator.sh --cpu-smoke``: the accelerator benchmark's own code, end to end on
tiny shapes on CPU, as CI runs it; its tables are filled with measured numbers."""

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
