"""Test setup: every test sees 8 simulated CPU devices, compiled fast (``tests/xla_flags.py``).

The flag must be in the environment before jax is first imported, so this file sets it at import
time (pytest imports conftest.py before any test module) and refuses to go on if jax came first.
"""

import fcntl
import os
import shutil
import sys

if "jax" in sys.modules:
    raise RuntimeError(
        "jax was imported before tests/conftest.py could set "
        "--xla_force_host_platform_device_count=8; import jax only inside tests"
    )
from jaxalign import host_memory  # imports nothing: jax is still not imported
from tests.xla_flags import with_devices  # imports nothing, so jax is still not imported

# The suite starts many Python processes (trainers, multi-process launches). Where the
# environment sets PYTHONDONTWRITEBYTECODE (some CI images do), each of them would compile every
# module it imports from source again, about 8 s of CPU per process: the tests write (and so
# reuse) bytecode caches, in this process and in the ones it starts.
os.environ["PYTHONDONTWRITEBYTECODE"] = ""  # empty: unset, for the processes started here
sys.dont_write_bytecode = False
os.environ["JAX_PLATFORMS"] = "cpu"
# The processes tests start (and the test workers) run with the huge-pages tunable the
# ``jaxalign`` command restarts itself with (``jaxalign.host_memory``), as the command does,
# and need no restart.
os.environ.update(host_memory.environment_with_huge_pages(os.environ) or {})
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), with_devices(8)]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.trainer_child import compilation_cache_dir  # noqa: E402

# The session's compilation cache, made here in pytest's main process before it starts the test
# workers, so that they and the processes they start share it (``shared_compilation_cache``).
compilation_cache_dir()

# Each hypothesis example may compile; keep the profile small and free of wall-clock deadlines.
settings.register_profile("jaxalign", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("jaxalign")


# The slowest files, slowest first (their worker-seconds in a full run on 2 cores, 2026-12-07:
# 541, 323, 213, 201, 201, 177, 156, 148, 148 s); the other files follow in collection order.
# pytest-xdist hands whole files (``--dist loadfile``, ``--no-loadscope-reorder``: in this
# order) to whichever worker is free, so a long file taken last would run on alone at the end.
SLOWEST_FIRST = (
    "tests/test_multiprocess.py",
    "tests/test_train.py",
    "tests/tasks/test_reconstruction.py",
    "tests/train_lib/test_step.py",
    "tests/test_reliability.py",
    "tests/tasks/test_adapt.py",
    "tests/objectives/test_global_batch.py",
    "tests/tasks/test_mlm.py",
    "tests/tasks/test_clip_adapt.py",
)


def pytest_collection_modifyitems(items):
    rank = {path: n for n, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    assert jax.device_count() == 8, f"expected 8 simulated CPU devices, got {jax.devices()}"


@pytest.fixture(scope="session")
def builtin_data_dir(tmp_path_factory):
    """Both built-in datasets (``shapes_captions``, ``digits_domains``) and the caption
    tokenizer, built once for the session in one directory (the trainer tests' data), which
    the pytest-xdist workers share: the first to ask builds it while the other waits on a lock
    (about 25 s of building each worker would otherwise repeat); tests only read it."""
    from jaxalign.data import builtin

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above each worker's own
    path = root / "builtin_data"
    with open(root / "builtin_data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "complete").exists():
            shutil.rmtree(path, ignore_errors=True)  # a build that was interrupted
            path.mkdir()
            builtin.prepare("shapes_captions", path)
            builtin.prepare("digits_domains", path)
            builtin.build_caption_tokenizer(path)
            (path / "complete").touch()
    return str(path)


@pytest.fixture(scope="session")
def shapes_data_dir(builtin_data_dir):
    """The data directory of ``shapes_captions`` and its tokenizer (``builtin_data_dir``)."""
    return builtin_data_dir


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache():
    """``tests.trainer_child.compilation_cache`` for the whole session, in each test worker: a
    program an earlier test compiled (in this worker, the other one or a child process) is
    loaded, not compiled again."""
    from tests.trainer_child import compilation_cache

    with compilation_cache():
        yield


@pytest.fixture
def lower_for_cuda(monkeypatch):
    """Lets jax lower cuDNN attention for CUDA on a CPU-only machine: the cuDNN version and
    compute capability are asked of a GPU at trace time, so they are set (cuDNN 9.1, a GPU of
    compute capability 9.0 or later, not 10.3); the kernel's own checks of shapes, dtype and
    mask form still run. These are jax-internal names (``jax._src.cudnn``): a jax that renames
    them fails these tests loudly, not silently."""
    from jax._src.cudnn import fused_attention_stablehlo as fused

    monkeypatch.setattr(fused, "check_cudnn_version", lambda: 90100)
    monkeypatch.setattr(fused, "check_compute_capability", lambda capability: True)
    monkeypatch.setattr(fused, "is_cuda_compute_capability_equal", lambda capability: False)

    def lower(fn, *args) -> str:
        """``fn`` (jitted here) lowered for CUDA: its StableHLO text."""
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

    return lower
