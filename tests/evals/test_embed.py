"""embed_dataset on the 8-device mesh: equals the unsharded function, last partial batch
included; compiles once; places batches over the batch axes; passes host fields through; and on
two processes (4 CPU devices each) whose shards have different numbers of batches."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.evals import embed as embed_lib
from jaxalign.evals import embed_dataset
from jaxalign.parallel import batch_sharding, make_mesh
from tests.xla_flags import with_devices

W = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)


def _reference(x):
    return {"y": np.tanh(x @ W), "norm": np.sum(x * x, axis=-1)}


def _batches(sizes, seed=0):
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for n in sizes:
        out.append(
            {
                "x": rng.normal(size=(n, 6)).astype(np.float32),
                "label": np.arange(start, start + n),
                "caption": np.array([f"caption {i}".encode() for i in range(start, start + n)]),
            }
        )
        start += n
    return out


def _counting_fn():
    traces = []

    def fn(batch):
        traces.append(batch["x"].shape)
        x = batch["x"]
        return {"y": jnp.tanh(x @ W), "norm": jnp.sum(x * x, axis=-1)}

    return fn, traces


@pytest.mark.parametrize(
    "axes, global_batch_size, sizes",
    [({"data": 8}, 16, [16, 16, 5]), ({"data": 2, "fsdp": 2, "tensor": 2}, 12, [12, 7])],
)
def test_equals_unsharded_and_compiles_once(axes, global_batch_size, sizes):
    mesh = make_mesh(axes)
    batches = _batches(sizes)
    fn, traces = _counting_fn()
    out = embed_dataset(
        fn, batches, mesh, global_batch_size=global_batch_size, keep=("label", "caption")
    )
    assert traces == [(global_batch_size, 6)]  # one trace, padded shape
    x = np.concatenate([b["x"] for b in batches])
    expected = _reference(x)
    assert set(out) == {"y", "norm", "label", "caption"}
    np.testing.assert_allclose(out["y"], expected["y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["norm"], expected["norm"], rtol=1e-5)
    np.testing.assert_array_equal(out["label"], np.arange(sum(sizes)))
    assert out["caption"][-1] == f"caption {sum(sizes) - 1}".encode()


def test_a_jitted_function_is_reused_across_calls():
    mesh = make_mesh({"data": 8})
    fn, traces = _counting_fn()
    jitted = jax.jit(fn)
    first = embed_dataset(
        jitted, _batches([8, 3]), mesh, global_batch_size=8, keep=("label", "caption")
    )
    second = embed_dataset(jitted, _batches([5], seed=1), mesh, global_batch_size=8, inputs=["x"])
    assert len(traces) == 1
    assert first["y"].shape == (11, 4) and set(second) == {"y", "norm"}
    np.testing.assert_allclose(second["y"], _reference(_batches([5], seed=1)[0]["x"])["y"], 1e-5)


def test_params_are_an_argument_not_a_constant():
    mesh = make_mesh({"data": 8})
    traces = []

    @jax.jit
    def fn(params, batch):
        traces.append(1)
        return {"y": batch["x"] @ params["w"]}

    batches = _batches([8, 2])
    for scale in (1.0, 2.0):  # new parameters, same compiled function
        out = embed_dataset(
            fn, batches, mesh, global_batch_size=8, inputs=["x"], params={"w": scale * W}
        )
        x = np.concatenate([b["x"] for b in batches])
        np.testing.assert_allclose(out["y"], x @ (scale * W), rtol=1e-5, atol=1e-5)
    assert len(traces) == 1


def test_batches_are_placed_over_the_batch_axes():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    placed = embed_lib._put({"x": np.zeros((8, 3), np.float32)}, mesh)
    assert placed["x"].sharding.is_equivalent_to(batch_sharding(mesh), 2)
    assert len(placed["x"].sharding.device_set) == 8
    assert placed["x"].addressable_shards[0].data.shape == (2, 3)


def test_padding_repeats_the_last_row():
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(embed_lib._pad_rows(x, 5)[3:], [[4, 5], [4, 5]])
    assert embed_lib._pad_rows(x[:0], 2).shape == (2, 2)


def test_progress_bar(capsys):
    mesh = make_mesh({"data": 8})
    fn, _ = _counting_fn()
    embed_dataset(fn, _batches([8, 8]), mesh, global_batch_size=8, keep=("caption",), progress=1)
    assert "embed" in capsys.readouterr().err


def test_errors_are_named():
    mesh = make_mesh({"data": 8})
    fn, _ = _counting_fn()
    with pytest.raises(ValueError, match="multiple of the 8 batch shards"):
        embed_dataset(fn, _batches([4]), mesh, global_batch_size=12)
    with pytest.raises(ValueError, match="at most 8"):
        embed_dataset(fn, _batches([9]), mesh, global_batch_size=8, keep=("caption",))
    with pytest.raises(ValueError, match="empty"):
        embed_dataset(fn, [], mesh, global_batch_size=8)
    with pytest.raises(ValueError, match=r"keep fields \['norm'\]"):
        batches = [{"x": b["x"], "norm": b["label"]} for b in _batches([4])]
        embed_dataset(fn, batches, mesh, global_batch_size=8, keep=("norm",))
    with pytest.raises(TypeError, match="dict"):
        embed_dataset(lambda b: b["x"], _batches([4]), mesh, global_batch_size=8, inputs=["x"])
    with pytest.raises(ValueError, match="leading batch axis"):
        embed_dataset(
            lambda b: {"s": b["x"].sum()}, _batches([4]), mesh, global_batch_size=8, inputs=["x"]
        )


# --- two processes -----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PROCESS_SIZES = ([8, 8, 3], [8, 5])  # per-process batches (global batch 16): 3 steps vs 2


def _process_batches(process):
    rng = np.random.default_rng(process)
    out, start = [], 1000 * process
    for n in PROCESS_SIZES[process]:
        out.append(
            {"x": rng.normal(size=(n, 6)).astype(np.float32), "label": np.arange(start, start + n)}
        )
        start += n
    return out


def _worker(process: int, port: int) -> None:
    """One of two processes: embeds its shard, checks the gathered result against all shards."""
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process
    )
    mesh = make_mesh({"data": -1})
    fn, traces = _counting_fn()
    out = embed_dataset(fn, _process_batches(process), mesh, global_batch_size=16, keep=("label",))
    everything = [b for p in range(2) for b in _process_batches(p)]
    labels = np.concatenate([b["label"] for b in everything])
    ys = _reference(np.concatenate([b["x"] for b in everything]))["y"]
    expected = dict(zip(labels, ys, strict=True))
    assert len(traces) == 1, traces
    assert sorted(out["label"]) == sorted(labels), out["label"]
    for label, y in zip(out["label"], out["y"], strict=True):
        np.testing.assert_allclose(y, expected[label], rtol=1e-5, atol=1e-6)
    print(f"process {process}: ok")


def test_two_processes_with_unequal_shards(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": with_devices(4),
        "PYTHONPATH": str(ROOT),
    }
    logs = [tmp_path / f"process{p}.log" for p in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.evals.test_embed", str(p), str(port)],
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for p, log in enumerate(logs)
    ]
    try:
        codes = [proc.wait(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    text = "\n".join(log.read_text()[-3000:] for log in logs)
    assert codes == [0, 0], text
    assert "process 0: ok" in text and "process 1: ok" in text


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))
