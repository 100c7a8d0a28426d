"""Nothing lost, nothing hung, nothing hidden: the trainer under bad data, divergence, damaged
checkpoints, a second run, a full disk and Ctrl-C (issue 13; docs/reliability.md lists each
probe). Runs that must die or be limited are real subprocesses; the rest run in-process on the
8 simulated devices."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from jaxalign import cli, train
from jaxalign.data import builtin
from jaxalign.parallel import make_mesh
from jaxalign.tasks import get_task
from jaxalign.train_lib.metric_writers import read_metrics
from jaxalign.train_lib.workdir import open_workdir
from tests.trainer_child import (
    compilation_cache_dir,
    losses,
    plant_nan,
    run_python,
    wrap_clip_stream,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIG = os.path.join(ROOT, "configs", "clip.py")


@pytest.fixture(scope="module")
def data_dir(shapes_data_dir):
    return shapes_data_dir


def _args(workdir, data_dir, **overrides):
    values = {"data.data_dir": data_dir, "train.log_every": 1, **overrides}
    return [f"--config={CONFIG}:tiny", f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def _shard(path, good, bad):
    """A webdataset shard: ``good`` PNG + caption samples, then ``bad`` corrupt JPEGs."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for i in range(good + bad):
            if i < good:
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(buffer, "PNG")
                members = {f"{i:04d}.png": buffer.getvalue(), f"{i:04d}.txt": b"a red circle"}
            else:
                members = {f"{i:04d}.jpg": b"\xff\xd8 not a jpeg", f"{i:04d}.txt": b"a square"}
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def _webdataset(shard, data_dir):
    return {
        "data.source": "webdataset",
        "data.shards": shard,
        "data.tokenizer": os.path.join(data_dir, builtin.TOKENIZER_DIRNAME),
        "data.max_skipped_in_a_row": 50,
        "evals.zeroshot_split": "''",
        "evals.retrieval_split": "''",
    }


# 1. Data that is all bad stops in seconds, naming the shard; a stop request is honoured while
#    the loop waits for data.


def test_all_bad_data_stops_the_run_naming_the_shard(data_dir, tmp_path, capsys):
    shard = _shard(tmp_path / "bad.tar", good=0, bad=20)
    workdir = tmp_path / "run"
    started = time.perf_counter()
    # 3 steps (none is run): the step compiled here is the one the skipped-examples test runs.
    overrides = {**_webdataset(shard, data_dir), "train.steps": 3}
    code = cli.main(["train", *_args(workdir, data_dir, **overrides)])
    assert code == 2 and time.perf_counter() - started < 120
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: 50 examples in a row"), err
    assert shard in err and "corrupt_image 50" in err
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["stopped"].startswith("TooManySkipped") and summary["step"] == 0


def test_a_stop_request_is_honoured_while_waiting_for_data(data_dir, tmp_path, monkeypatch):
    """The stream hangs before step 3's batch; SIGTERM then saves step 2 with the data position
    before the hung fetch, and the run resumes from there to the end."""
    waiting, seen, resumed = threading.Event(), [], threading.Event()

    def on_batch(count, next_batch):
        if count == 3 and not resumed.is_set():
            waiting.set()
            threading.Event().wait()  # forever: only the loop's stop check can end the wait
        batch = next_batch()
        seen.append({name: np.array(value) for name, value in batch.items()})  # a copy
        return batch

    wrap_clip_stream(monkeypatch, on_batch)
    threading.Thread(
        target=lambda: waiting.wait(120) and os.kill(os.getpid(), signal.SIGTERM), daemon=True
    ).start()
    config = cli_config(data_dir, **{"train.steps": 4, "train.checkpoint_every": 10})
    with pytest.raises(train.Preempted, match="SIGTERM at step 2"):
        _train_one_device(config, tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]
    resumed.set()
    summary = _train_one_device(config, tmp_path / "run")
    assert summary["step"] == 4
    assert [row["step"] for row in read_metrics(tmp_path / "run") if "loss" in row] == [1, 2, 3, 4]
    # No batch lost or repeated: batches 1-2, then (resumed) 3-4, are the stream's first four.
    monkeypatch.undo()
    task = get_task(config, make_mesh(dict(config.mesh), jax.devices()[:1]))
    stream = iter(task.train_stream())
    assert len(seen) == 4
    for got in seen:
        want = next(stream)
        for name in ("image", "ids"):
            np.testing.assert_array_equal(got[name], want[name])
    stream.close()


def _train_one_device(config, workdir):
    """In-process training on one device (these tests are about the loop, not the mesh)."""
    return train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])


def cli_config(data_dir, **overrides):
    """The tiny preset without evals (they are not what these tests check, and compile)."""
    from jaxalign import config as config_lib

    values = {
        "data.data_dir": data_dir,
        "train.log_every": 1,
        "evals.zeroshot_split": "''",
        "evals.retrieval_split": "''",
        **overrides,
    }
    return config_lib.load(f"{CONFIG}:tiny", [f"{k}={v}" for k, v in values.items()])


# 2. Skipped examples are reported: log, metrics.jsonl, TensorBoard, summary.json.


def test_skipped_examples_are_counted_everywhere_a_user_looks(data_dir, tmp_path, capsys):
    shard = _shard(tmp_path / "mixed.tar", good=30, bad=10)
    workdir = tmp_path / "run"
    overrides = {**_webdataset(shard, data_dir), "train.steps": 3}
    assert cli.main(["train", *_args(workdir, data_dir, **overrides)]) == 0
    out = capsys.readouterr().out
    assert f"data: WebDatasetSource('{shard}', 40 samples) (40 records)" in out
    assert "skipped " in out and "corrupt_image" in out
    last = [row for row in read_metrics(workdir) if "loss" in row][-1]
    assert last["data/skipped"] == last["data/skipped/corrupt_image"] > 0
    assert last["data/examples"] == 3 * 16
    assert last["data/skipped_fraction"] == pytest.approx(
        last["data/skipped"] / (last["data/skipped"] + 48)
    )
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["data/records"] == 40
    assert summary["data/skipped/corrupt_image"] == last["data/skipped"]
    events = b"".join(p.read_bytes() for p in (workdir / "tensorboard").iterdir())
    assert b"data/skipped/corrupt_image" in events


# 5. Divergence never poisons the checkpoints; a lower rate resumes from before the streak.


def test_a_divergence_keeps_the_last_finite_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    plant_nan(monkeypatch, bad_steps={3, 4, 5})
    workdir = tmp_path / "run"
    schedule = {"train.steps": 8, "train.checkpoint_every": 1, "train.eval_every": 2}
    config = cli_config(data_dir, **schedule, **{"optim.max_nonfinite_in_a_row": 3})
    with pytest.raises(train.TrainingDivergedError, match="newest checkpoint, 2, is from before"):
        _train_one_device(config, workdir)
    out = capsys.readouterr().out
    assert "step 3: checkpoint not saved: 1 non-finite updates in a row" in out
    assert "eval at step 4 skipped" in out
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["stopped"].startswith("TrainingDivergedError") and summary["step"] == 5
    monkeypatch.undo()
    # A lower rate resumes from step 2. The last update (step 8) is non-finite again: a run
    # that ends inside a streak keeps no final checkpoint and says so.
    plant_nan(monkeypatch, bad_steps={6})  # the 6th batch after the resume: step 8
    lower = cli_config(
        data_dir, **schedule, **{"optim.lr": 1e-4, "optim.max_nonfinite_in_a_row": 3}
    )
    with pytest.raises(train.TrainingDivergedError, match="ended during 1 non-finite update"):
        _train_one_device(lower, workdir)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "7"]
    monkeypatch.undo()
    assert _train_one_device(lower, workdir)["step"] == 8
    assert sorted(losses(workdir)) == list(range(1, 9))
    change = json.loads((workdir / "config_changes.jsonl").read_text())
    assert change["step"] == 2 and change["key"] == "optim.lr" and change["new"] == 1e-4


# 6. A damaged newest checkpoint: the run resumes from the one before.


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(data_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    schedule = {"train.checkpoint_every": 2, "train.keep_checkpoints": 3, "train.eval_every": 99}
    assert cli.main(["train", *_args(workdir, data_dir, **schedule, **{"train.steps": 4})]) == 0
    for path in (workdir / "checkpoints" / "4").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    assert cli.main(["train", *_args(workdir, data_dir, **schedule, **{"train.steps": 6})]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {workdir}/checkpoints/4 does not read" in out and "moved to" in out
    assert "resumed from checkpoint 2" in out
    assert [row["step"] for row in read_metrics(workdir) if "loss" in row] == list(range(1, 7))
    assert len(os.listdir(workdir / "corrupt_checkpoints")) == 1
    # The run's evals on a read-only copy: the figures are printed, eval.json is not needed.
    _evaluate_read_only(workdir, capsys)


def _evaluate_read_only(workdir, capsys):
    for path in [workdir, *workdir.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the write fail as it would
            real_open = open

            def read_only_open(file, mode="r", *args, **kwargs):
                if str(file).startswith(str(workdir)) and any(c in mode for c in "wax+"):
                    raise PermissionError(13, "Permission denied", str(file))
                return real_open(file, mode, *args, **kwargs)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr("builtins.open", read_only_open)
                code = cli.main(["eval", f"--workdir={workdir}"])
        else:
            code = cli.main(["eval", f"--workdir={workdir}"])
    finally:
        for path in [workdir, *workdir.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["step"] == 6
    assert "eval.json not written" in captured.err and not (workdir / "eval.json").exists()


# 7. A second run on a live run's directory is refused at start.


def test_a_second_run_on_a_live_runs_directory_is_refused(data_dir, tmp_path, capsys):
    with open_workdir(tmp_path / "run"):
        assert cli.main(["train", *_args(tmp_path / "run", data_dir)]) == 2
    err = capsys.readouterr().err
    assert f"another run is training there (pid {os.getpid()}" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# 8. Ctrl-C while compiling, a full disk: one line each, nothing torn.


def test_ctrl_c_while_compiling_stops_cleanly(data_dir, tmp_path):
    code = textwrap.dedent(
        """
        import os, signal, sys
        from jaxalign import cli, train
        compile_step = train.RunSetup.compile_step
        def interrupted(self):
            os.kill(os.getpid(), signal.SIGINT)
            return compile_step(self)
        train.RunSetup.compile_step = interrupted
        cli.run()
        """
    )
    # 8 steps (none is run): the programs compiled here are the full-disk test's, next.
    args = _args(tmp_path / "run", data_dir, **{"train.steps": 8})
    result = run_python(code, ["train", *args])
    assert result.returncode == 143, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "stopped by SIGINT at step 0" in result.stderr


def test_failed_saves_are_reported_at_once_and_stop_the_run(data_dir, tmp_path):
    code = textwrap.dedent(
        """
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # a disk that is full
        from jaxalign import cli
        sys.exit(cli.main(["train", *sys.argv[1:]]))
        """
    )
    overrides = {"train.steps": 8, "train.checkpoint_every": 1, "train.max_failed_saves": 2}
    # The compilation cache read only (no entry is ever written: a write would fail here too).
    read_only = {
        "JAX_COMPILATION_CACHE_DIR": compilation_cache_dir(),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1000000",
    }
    result = run_python(code, _args(tmp_path / "run", data_dir, **overrides), env=read_only)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    failed = [line for line in result.stdout.splitlines() if "could not be saved" in line]
    assert [line.split()[2] for line in failed] == ["1", "2"], result.stdout
    assert "File too large" in failed[0]
    error = [line for line in result.stderr.splitlines() if line.strip()]
    assert error == [error[0]] and "2 checkpoint saves in a row failed" in error[0], error
    assert not os.listdir(tmp_path / "run" / "checkpoints")  # no partial write left


# 3, 4, 8 and the acceptance: a user error is one line and exit status 2, never a traceback.


def _foreign(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    return str(tmp_path)


def _bad_run_config(tmp_path):
    with open_workdir(tmp_path / "run"):
        pass
    (tmp_path / "run" / "config.json").write_text('{"task": "clip", "seed": ')
    return str(tmp_path / "run")


USER_ERRORS = {
    "unknown key": ([], ["--config.train.batch_size=4"], "config.train.batch_size"),
    "bad value": ([], ["--config.optim.lr=fast"], "config.optim.lr='fast'"),
    "repeated key": (
        [],
        ["--config.data.shards=/d/s0.tar", "--config.data.shards=/d/s1.tar"],
        "data.shards",
    ),
    "unknown preset": (["--config=configs/clip.py:nope"], [], "unknown preset 'nope'"),
    "missing config file": (["--config=configs/nope.py"], [], "configs/nope.py"),
    "missing data": (
        ["--config=configs/classify.py:tiny"],
        ["--config.data.source=tfds", "--config.data.name=nope"],
        "config.data.name='nope': no TFDS dataset",
    ),
    "empty workdir": (["--workdir="], [], "--workdir is empty"),
    "workdir is a file": ("file", [], "is a file"),
    "workdir of other files": ("foreign", [], "not a jaxalign run"),
    "malformed run config.json": ("bad_run", [], "config.json"),
}


def _user_error_args(case, tmp_path, data_dir):
    """The command line of ``jaxalign train`` for ``case``, its work directory made first."""
    head, overrides, _ = USER_ERRORS[case]
    workdir = {
        "file": lambda: (tmp_path / "f.txt").write_text("x") and str(tmp_path / "f.txt"),
        "foreign": lambda: _foreign(tmp_path),
        "bad_run": lambda: _bad_run_config(tmp_path),
    }.get(head if isinstance(head, str) else "", lambda: str(tmp_path / "new"))()
    args = [f"--config={CONFIG}:tiny", f"--workdir={workdir}"]
    if isinstance(head, list):
        args = [*head, *[a for a in args if a.split("=")[0] not in {h.split("=")[0] for h in head}]]
    return [*args, f"--config.data.data_dir={data_dir}", *overrides]


# Runs each case as `python -m jaxalign train ARGS` does (runpy, as __main__), one after the
# other in one process: its own stdout and stderr files (file descriptors 1 and 2, so output
# from C++ as well), its exit status as the interpreter would give it, and the warnings
# registry invalidated first so a warning shows in each case it is raised in, as it would in a
# fresh process. Nothing is imported before the first case.
USER_ERROR_CHILD = textwrap.dedent(
    """
    import json, os, runpy, sys, traceback, warnings
    cases, out = json.loads(sys.argv[1]), sys.argv[2]
    results = {}
    for number, (case, args) in enumerate(cases.items()):
        err_path, out_path = (os.path.join(out, f"{number}.{name}") for name in ("err", "out"))
        sys.stdout.flush()
        sys.stderr.flush()
        kept = os.dup(1), os.dup(2)
        with open(out_path, "wb") as stdout, open(err_path, "wb") as stderr:
            os.dup2(stdout.fileno(), 1)
            os.dup2(stderr.fileno(), 2)
            sys.argv = ["-m", "train", *args]
            code = 0
            with warnings.catch_warnings():
                try:
                    runpy.run_module("jaxalign", run_name="__main__", alter_sys=True)
                except SystemExit as exit:
                    if isinstance(exit.code, int) or exit.code is None:
                        code = exit.code or 0
                    else:
                        print(exit.code, file=sys.stderr)
                        code = 1
                except BaseException:
                    traceback.print_exc()
                    code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(kept[0], 1)
            os.dup2(kept[1], 2)
        for fd in kept:
            os.close(fd)
        with open(err_path) as stderr:
            results[case] = {"returncode": code, "stderr": stderr.read()}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f)
    """
)


@pytest.fixture(scope="module")
def user_errors(data_dir, tmp_path_factory):
    """Every case of USER_ERRORS run as `python -m jaxalign train ...` in one child process (one
    interpreter start and one import of jax, not ten): ``{case: {"returncode", "stderr"}}``."""
    cases = {
        case: _user_error_args(case, tmp_path_factory.mktemp("user_error"), data_dir)
        for case in sorted(USER_ERRORS)
    }
    out = tmp_path_factory.mktemp("user_error_output")
    child = subprocess.run(
        [sys.executable, "-c", USER_ERROR_CHILD, json.dumps(cases), str(out)],
        capture_output=True,
        text=True,
        timeout=120 * len(cases),
        cwd=ROOT,
        check=False,
    )
    # Each case's output went to its own files: anything here came from none of them (a crash,
    # or noise at interpreter shutdown, which a process per case would have shown in each).
    assert child.returncode == 0 and not child.stderr.strip(), child.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_a_user_error_is_one_line_and_exit_status_2(case, user_errors):
    expected = USER_ERRORS[case][2]
    result = user_errors[case]
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["returncode"] == 2, result["stderr"][-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"]
    assert expected in lines[0], lines[0]
