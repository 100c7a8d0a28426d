"""metrics.jsonl rows, truncation on resume, and throughput / utilisation figures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.train_lib import metric_writers, throughput
from jaxalign.train_lib.metric_writers import MetricWriter, read_metrics, truncate_after


def test_rows_are_plain_json_and_flushed(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=3, start_step=0, progress=False)
    writer.write(1, {"loss": jnp.float32(2.5), "skipped": np.int32(0), "lr": 1e-3})
    writer.write(2, {"loss": float("nan")})
    assert read_metrics(tmp_path) == [  # readable before close: each row is flushed
        {"step": 1, "loss": 2.5, "skipped": 0, "lr": 1e-3},
        {"step": 2, "loss": "nan"},
    ]
    writer.close()
    assert list((tmp_path / "tensorboard").iterdir())


def test_unfiled_keys_stay_out_of_the_file_and_in_the_row(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=1, start_step=0, progress=False)
    row = writer.write(1, {"loss": 2.0, "examples_per_s": 31.5}, unfiled=("examples_per_s",))
    writer.close()
    assert row == {"step": 1, "loss": 2.0, "examples_per_s": 31.5}  # for the log and TensorBoard
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=6, start_step=0, progress=False)
    for step in range(1, 6):
        writer.write(step, {"loss": float(step)})
    writer.write(4, {"eval/top1": 0.5})
    writer.close()
    resumed = MetricWriter(tmp_path, total_steps=6, start_step=3, progress=False)
    resumed.write(4, {"loss": 40.0})
    resumed.close()
    rows = read_metrics(tmp_path)
    assert [(r["step"], r.get("loss")) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_a_run_killed_before_its_first_checkpoint_starts_its_rows_again(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=4, start_step=0, progress=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # the row the kill cut short
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]
    again = MetricWriter(tmp_path, total_steps=4, start_step=0, progress=False)
    again.write(1, {"loss": 1.0})
    again.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2: not a JSON row"):
        read_metrics(tmp_path)


def test_a_finished_run_run_again_replaces_its_final_eval_row(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=2, start_step=0, progress=False)
    writer.write(2, {"loss": 1.0})
    writer.write(2, {"eval/top1": 0.5})
    writer.close()
    assert truncate_after(tmp_path, 2, evals_at_step=True) == 1
    assert read_metrics(tmp_path) == [{"step": 2, "loss": 1.0}]


def test_a_bucket_gets_copies_at_most_every_upload_seconds(tmp_path, monkeypatch):
    """A ``gs://`` work directory (a fake bucket): rows are staged locally, copied there when
    ``upload_seconds`` have passed and at close; a resume truncates the bucket's copy; eval
    pictures go straight there; nothing is written here through ``os``."""
    from tests.fake_bucket import fake_bucket

    monkeypatch.chdir(tmp_path)
    root, clock = tmp_path / "root", [0.0]
    run = root / "bucket" / "run"
    run.mkdir(parents=True)  # as open_workdir leaves it
    monkeypatch.setattr(metric_writers.time, "monotonic", lambda: clock[0])
    with fake_bucket(root):
        writer = MetricWriter("gs://bucket/run", total_steps=4, start_step=0, progress=False)
        writer.write(1, {"loss": 1.0})
        assert read_metrics("gs://bucket/run") == []  # copied at the start, before any row
        clock[0] = 30.0
        writer.write(2, {"loss": 2.0})
        assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1, 2]
        writer.write(3, {"loss": 3.0})
        assert writer.rows()[-1] == {"step": 3, "loss": 3.0}  # the local rows: all of them
        assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1, 2]
        (png,) = writer.write_images(3, {"pair": np.zeros((4, 6, 3), np.uint8)})
        assert png == "gs://bucket/run/images/pair_step3.png"
        writer.close()
        assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1, 2, 3]
        resumed = MetricWriter("gs://bucket/run", total_steps=4, start_step=2, progress=False)
        assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1, 2]
        resumed.close()
    assert (run / "images" / "pair_step3.png").read_bytes().startswith(b"\x89PNG")
    assert len(list((run / "tensorboard").iterdir())) == 2  # one event file per writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_peak_flops_table():
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert throughput.peak_flops("TPU v5 lite") == 197e12
    assert throughput.peak_flops("TPU v5p") == 459e12
    assert throughput.peak_flops("cpu") is None


def test_step_flops_of_a_matmul_and_utilisation():
    a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    b = jax.ShapeDtypeStruct((32, 16), jnp.float32)
    compiled = jax.jit(jnp.dot).lower(a, b).compile()
    assert throughput.step_flops(compiled) == pytest.approx(2 * 64 * 32 * 16, rel=0.01)
    meter = throughput.Throughput(examples_per_step=8, flops_per_step=1e9, peak=1e12)
    assert meter.report() == {}
    for _ in range(4):
        meter.count()
    report = meter.report()
    assert report["examples_per_s"] == pytest.approx(8 * report["steps_per_s"])
    assert report["mfu"] == pytest.approx(report["flops_per_s_per_device"] / 1e12)
    assert throughput.Throughput(8, None, None).report() == {}


def test_time_shares_per_interval_and_over_the_run(monkeypatch):
    """input_wait_share: the waits over the interval's time; loss_share: the objective's time
    per step times the steps, over it; means() weighs the intervals by their time."""
    clock = [0.0]
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock[0])
    meter = throughput.Throughput(8, None, None, objective_s=0.05)
    assert meter.means() == {}
    for _ in range(4):  # 4 steps in 1 s, of which 0.25 s waiting for batches
        meter.count()
    meter.waited(0.25)
    clock[0] = 1.0
    assert meter.report() == pytest.approx(
        {"steps_per_s": 4, "examples_per_s": 32, "input_wait_share": 0.25, "loss_share": 0.2}
    )
    for _ in range(2):  # 2 steps in 3 s, no waiting
        meter.count()
    clock[0] = 4.0
    assert meter.report()["loss_share"] == pytest.approx(0.1 / 3)
    assert meter.means() == pytest.approx({"input_wait_share": 0.25 / 4, "loss_share": 0.3 / 4})
    assert "loss_share" not in throughput.Throughput(8, None, None).means()


def test_objective_seconds_times_the_loss_on_its_shardings():
    """The compiled value and gradient of an objective over 8 devices' batch shards runs on
    random inputs made in those shardings; None without a probe."""
    from jaxalign.parallel import batch_sharding, make_mesh

    mesh = make_mesh({"data": 8}, jax.devices())
    spec = jax.ShapeDtypeStruct((64, 16), jnp.float32, sharding=batch_sharding(mesh))

    def objective(inputs):  # a [64, 64] similarity matrix from row-sharded inputs
        return jnp.sum(jnp.tanh(inputs[0] @ inputs[1].T))

    seconds = throughput.objective_seconds((objective, (spec, spec)), repeats=3)
    assert seconds is not None and seconds > 0
    assert throughput.objective_seconds(None) is None


def test_tensorboard_comes_without_torch_and_torch_still_imports(tmp_path):
    """In a fresh interpreter (torch may already be imported here): a writer's TensorBoard
    events are written without importing PyTorch, and ``import torch`` works afterwards."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("torch") is None:  # not imported here: it is heavy
        pytest.skip("torch is not installed")
    code = (
        "import sys\n"
        "from jaxalign.train_lib.metric_writers import MetricWriter\n"
        f"w = MetricWriter({str(tmp_path)!r}, total_steps=1, start_step=0, progress=False)\n"
        "w.write(1, {'loss': 0.5}); w.close()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import torch; print(torch.ones(2).sum().item())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "2.0"
    assert list((tmp_path / "tensorboard").iterdir())  # the event file
