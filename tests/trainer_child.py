"""Runs the real trainer command in a child process, optionally killing it at a chosen step.

Runs that must die (SIGKILL / SIGTERM at a chosen step) are real subprocesses of ``jaxalign
train``; a few lines of code in the child send the signal when the step is logged.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings

from jaxalign.train_lib.metric_writers import read_metrics
from tests.xla_flags import with_devices

CACHE_VARIABLE = "JAXALIGN_TESTS_XLA_CACHE"  # the directory, inherited by the test workers


def compilation_cache_dir() -> str:
    """A persistent XLA compilation cache shared by this test session's compilations: in every
    test (``tests/conftest.py`` turns it on for the session), in both pytest-xdist workers and
    in the processes tests start; made by the first process that asks (pytest's main process,
    which imports ``tests/conftest.py`` before it starts the workers; they inherit the
    directory through ``CACHE_VARIABLE``) and removed by it when it exits. Compiling the tiny
    presets' programs takes most of the suite's time on CPU; a program that an earlier test,
    in either worker, compiled for the same devices is loaded instead. An executable is only
    read back for the identical program, compile options and devices, so what runs is what a
    fresh compile would have produced."""
    path = os.environ.get(CACHE_VARIABLE)
    if not path:
        path = tempfile.mkdtemp(prefix="jaxalign-tests-xla-cache-")
        atexit.register(shutil.rmtree, path, True)
        os.environ[CACHE_VARIABLE] = path
    return path


def cache_env() -> dict[str, str]:
    """The environment that makes a child process use ``compilation_cache_dir()``."""
    return {
        "JAX_COMPILATION_CACHE_DIR": compilation_cache_dir(),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


@contextlib.contextmanager
def compilation_cache():
    """``compilation_cache_dir()`` for the compilations in this process while the block runs
    (a test module's fixture); the previous settings afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", compilation_cache_dir())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    cache.reset_cache()
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        cache.reset_cache()


def cache_on_every_process() -> None:
    """Lets every process of a multi-process test run write its compiled programs into the
    compilation cache. jax writes from process 0 only, and a program's cache key differs from
    one process to the next on CPU (``jit_step``'s key in processes 0 and 1 of one ``2x4``
    launch: two keys), so processes 1, 2, ... of every launch compiled every program again
    (about 30 s of CPU each for the tiny preset, 57 programs); writing their own entries, a
    later launch of the same layout loads them. What a process loads is still only what it
    compiled for the identical program, options and devices. A jax-internal name
    (``jax._src.compiler._cache_write``): a jax that renames it fails here, loudly."""
    from jax._src import compilation_cache, compiler

    if not callable(getattr(compiler, "_cache_write", None)):
        raise RuntimeError("jax._src.compiler._cache_write is gone: update cache_on_every_process")

    def write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks):
        if host_callbacks:  # as jax: programs with host callbacks are not cached
            return
        try:
            compilation_cache.put_executable_and_time(
                cache_key, module_name, executable, backend, int(compile_time_secs)
            )
        except Exception as error:  # as jax: a failed write warns, unless told to raise
            if compiler._should_raise_persistent_cache_error(error):
                raise
            message = f"compilation cache entry for {module_name!r} not written: {error}"
            warnings.warn(message, stacklevel=2)

    compiler._cache_write = write


def run_trainer(
    spec,
    workdir,
    overrides,
    *,
    signal_at=None,
    signal_name="SIGKILL",
    after_checkpoint=0,
    timeout=300,
    devices=None,
    fast_compile=True,
):
    """``jaxalign train --config=spec --workdir=workdir *overrides`` in a subprocess on one CPU
    device (or ``devices`` simulated ones), sharing the session's compilation cache, compiled
    as the tests compile (``fast_compile=False``: at XLA's default level; ``tests/xla_flags.py``);
    with ``signal_at`` the child sends itself ``signal_name`` as soon as that step's metrics are
    written (once the asynchronous checkpoint ``after_checkpoint`` is complete on disk, if
    given)."""
    code = "import sys\nfrom jaxalign import cli\n"
    if signal_at is not None:
        done = os.path.join(workdir, "checkpoints", str(after_checkpoint))
        code += signal_hook(signal_at, signal_name, done if after_checkpoint else None)
    code += "sys.exit(cli.main(['train', *sys.argv[1:]]))\n"
    args = [f"--config={spec}", f"--workdir={workdir}", *overrides]
    return run_python(code, args, devices=devices, fast_compile=fast_compile, timeout=timeout)


def signal_hook(step, signal_name, wait_for=None, workdir=None):
    """Python code that makes the trainer send itself ``signal_name`` as soon as ``step``'s
    metrics are written (in the run of ``workdir`` only, if given), once the directory
    ``wait_for`` (a completed checkpoint) exists, if given."""
    return textwrap.dedent(
        f"""
        import os, signal, time
        from jaxalign.train_lib import metric_writers
        _write = metric_writers.MetricWriter.write
        def write(self, step, metrics, **kwargs):
            row = _write(self, step, metrics, **kwargs)
            mine = {workdir!r} is None or str(self.workdir) == {workdir!r}
            if mine and step == {step} and "loss" in row:
                deadline = time.time() + 60
                while {wait_for!r} and not os.path.isdir({wait_for!r}):
                    assert time.time() < deadline, "checkpoint never completed"
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.{signal_name})
            return row
        metric_writers.MetricWriter.write = write
        """
    )


def run_python(code, args, *, devices=None, fast_compile=True, env=None, timeout=300):
    """``python -c code *args`` on one CPU device (or ``devices`` simulated ones), compiled as
    the tests compile (``fast_compile=False``: at XLA's default level; ``tests/xla_flags.py``),
    with the session's compilation cache unless ``env`` says otherwise; never raises on a
    failure (the ``CompletedProcess``, output captured)."""
    flags = with_devices(devices, fast_compile=fast_compile)
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", **cache_env(), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def losses(workdir):
    """``{step: loss}`` of a run's ``metrics.jsonl``."""
    return {row["step"]: row["loss"] for row in read_metrics(workdir) if "loss" in row}


def wrap_clip_stream(monkeypatch, on_batch):
    """The CLIP task's training iterator yields ``on_batch(count, next_batch)`` instead:
    ``count`` is the 1-based number of the batch asked for, ``next_batch()`` the real one."""
    from jaxalign.tasks.clip import ClipTask

    pipeline = ClipTask.train_stream

    class Wrapped:
        def __init__(self, iterator):
            self.iterator, self.count = iterator, 0

        def __next__(self):
            self.count += 1
            return on_batch(self.count, lambda: next(self.iterator))

        def __getattr__(self, name):  # get_state, set_state, metrics, close
            return getattr(self.iterator, name)

    class WrappedStream:
        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            return Wrapped(iter(self.inner))

    monkeypatch.setattr(ClipTask, "train_stream", lambda self: WrappedStream(pipeline(self)))


def plant_nan(monkeypatch, bad_steps):
    """Batches ``bad_steps`` (1-based) of the CLIP task's training stream get NaN images."""
    import numpy as np

    def on_batch(count, next_batch):
        batch = next_batch()
        if count in bad_steps:
            batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
        return batch

    wrap_clip_stream(monkeypatch, on_batch)


def saved_subtree(workdir, *path: str, step: int | None = None) -> dict:
    """The subtree at ``path`` (``"params"``, ``"ema_params", "backbone"``) of a run's newest
    checkpoint (or of checkpoint ``step``), read back as saved on one device."""
    import jax

    from jaxalign.train_lib.checkpoint import Checkpointer

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, read_only=True)
    try:
        tree, _ = checkpointer.state_metadata(step)
        for name in path:
            tree = tree[name]
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        request = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree
        )
        for name in reversed(path):
            request = {name: request}
        part, _ = checkpointer.restore_part(request, step)
    finally:
        checkpointer.close()
    for name in path:
        part = part[name]
    return jax.device_get(part)


def main(argv: list[str]) -> int:
    """``python -m tests.trainer_child -m jaxalign train ...`` (``child_interpreter``'s form):
    the trainer, every process writing the compilation cache (``cache_on_every_process``)."""
    if argv[:2] != ["-m", "jaxalign"]:
        raise SystemExit(f"usage: trainer_child.py -m jaxalign train ...; got {argv[:2]}")
    cache_on_every_process()
    from jaxalign import cli

    return cli.main(argv[2:])


def child_interpreter(directory, module: str, **env: object) -> str:
    """Writes ``directory/python``: an interpreter for ``launch/local.sh``'s ``PYTHON`` that
    runs ``python -m <module> <its arguments>`` from the repository root with ``env`` set;
    returns its path."""
    path = os.path.join(directory, "python")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assigned = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    with open(path, "w") as f:
        f.write(
            f"#!/bin/sh\ncd {shlex.quote(root)} && {assigned} "
            f'exec {shlex.quote(sys.executable)} -m {module} "$@"\n'
        )
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
