"""``benchmarks/accelerator.sh --cpu-smoke``: the accelerator benchmark's own code, end to end on
tiny shapes on CPU, as CI runs it; its tables are filled with measured numbers. And
``benchmarks/suite_profile.py``, the test-time profiler, in a pytest run of its own; and the
arithmetic of ``benchmarks/zeroshot_breakdown.py``."""

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


def _load_script(name: str):
    """A benchmark script as a module (``benchmarks/`` is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "benchmarks", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zeroshot_breakdown_poolings_and_text_similarity():
    """``benchmarks/zeroshot_breakdown.py``'s arithmetic on embeddings built by hand: 30 classes
    (6 colours x 5 shapes), two templates each."""
    import numpy as np

    breakdown = _load_script("zeroshot_breakdown")
    eye = np.eye(32)
    colour_of = np.arange(30) // 5
    # Every template of a class on the class's own axis: alike within a class only.
    own = np.stack([eye[:30], eye[:30]], axis=1)
    assert breakdown.text_similarity(own) == (1.0, 0.0, 0.0)
    # On its colour's axis: a class's templates and its colour's classes all alike.
    by_colour = np.stack([eye[colour_of], eye[colour_of]], axis=1)
    assert breakdown.text_similarity(by_colour) == (1.0, 1.0, 0.0)
    # Template 0 on the class's axis, template 1 on a wording axis (30) that classes 0-28
    # share; class 29's on axis 31. An image on class 3's axis and the wording axis: averaging
    # the templates picks class 3; the best template alone ties classes 0-28 on the wording.
    mixed = np.stack([eye[:30], np.repeat(eye[30:31], 30, 0)], axis=1)
    mixed[29, 1] = eye[31]
    image = (eye[3] + eye[30]) / np.sqrt(2)
    scores = {k: v[0] for k, v in breakdown.class_scores(image[None], mixed).items()}
    assert set(scores) == {"mean_embedding", "mean_cosine", "max_cosine"}
    assert int(scores["mean_embedding"].argmax()) == int(scores["mean_cosine"].argmax()) == 3
    np.testing.assert_allclose(scores["max_cosine"], [2**-0.5] * 29 + [0.0])
    np.testing.assert_allclose(scores["mean_cosine"][[3, 5, 29]], [2**-0.5, 2**-1.5, 0.0])
    # Class 3's two unit templates average to norm 1/sqrt(2); renormalised: cosine 1 with the
    # image. Class 5's: cosine 1/2.
    np.testing.assert_allclose(scores["mean_embedding"][[3, 5, 29]], [1.0, 0.5, 0.0], atol=1e-12)
    # Top-1 counts a tie against the true class: the best template ties classes 0-28.
    assert breakdown.top1(scores["mean_embedding"][None], np.array([3])) == 1.0
    assert breakdown.top1(scores["max_cosine"][None], np.array([3])) == 0.0
    assert breakdown.top1(scores["max_cosine"][None], np.array([29])) == 0.0
