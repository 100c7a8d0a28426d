"""Test setup: every test sees 8 simulated CPU devices.

The flag must be in the environment before jax is first imported, so this file sets it at import
time (pytest imports conftest.py before any test module) and refuses to go on if jax came first.

With pytest-xdist workers, the controller starts building the built-in datasets in the
background before the workers start (``DATA_ENV`` tells them where), so the data is built once
for the session instead of once per worker, while the workers run the tests that need none; and
every worker's persistent compilation cache is one directory (``tests.trainer_child``).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

if "jax" in sys.modules:
    raise RuntimeError(
        "jax was imported before tests/conftest.py could set "
        "--xla_force_host_platform_device_count=8; import jax only inside tests"
    )
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()

import jax
import pytest
from hypothesis import settings

# Each hypothesis example may compile; keep the profile small and free of wall-clock deadlines.
settings.register_profile("jaxalign", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("jaxalign")


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    assert jax.device_count() == 8, f"expected 8 simulated CPU devices, got {jax.devices()}"


DATA_ENV = "JAXALIGN_TEST_DATA_DIR"  # where the controller builds the data (xdist runs)
BUILD = """
import pathlib, sys
from jaxalign.data import builtin
path = sys.argv[1]
builtin.prepare("shapes_captions", path)
builtin.prepare("digits_domains", path)
builtin.build_caption_tokenizer(path)
pathlib.Path(path, "BUILT").touch()
"""


def pytest_configure(config):
    """In the xdist controller: the data build starts in the background (see the docstring)."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    from tests.trainer_child import CACHE_ENV, compilation_cache_dir

    os.environ[CACHE_ENV] = compilation_cache_dir()  # the workers inherit the environment
    path = tempfile.mkdtemp(prefix="jaxalign-test-data-")
    os.environ[DATA_ENV] = path
    log = open(os.path.join(path, "build.log"), "w")  # noqa: SIM115 (the build's lifetime)
    config.jaxalign_build = (subprocess.Popen([sys.executable, "-c", BUILD, path], stdout=log,
                                              stderr=subprocess.STDOUT), log, path)  # fmt: skip


def pytest_unconfigure(config):
    build = getattr(config, "jaxalign_build", None)
    if build is not None:
        process, log, path = build
        process.kill()
        process.wait()
        log.close()
        shutil.rmtree(path, ignore_errors=True)


def _wait_for_the_build(path: str) -> str:
    deadline = time.monotonic() + 900
    log = pathlib.Path(path, "build.log")
    while not os.path.exists(os.path.join(path, "BUILT")):
        text = log.read_text() if log.exists() else ""
        if "Traceback" in text:
            raise RuntimeError(f"building the test data failed:\n{text[-3000:]}")
        assert time.monotonic() < deadline, f"the test data build in {path} took over 900 s"
        time.sleep(0.2)
    return path


@pytest.fixture(scope="session")
def builtin_data_dir(tmp_path_factory):
    """Both built-in datasets (``shapes_captions``, ``digits_domains``) and the caption
    tokenizer, built once for the session in one directory (the trainer tests' data): by the
    xdist controller for all workers, or here without workers."""
    if os.environ.get(DATA_ENV):
        return _wait_for_the_build(os.environ[DATA_ENV])
    from jaxalign.data import builtin

    path = tmp_path_factory.mktemp("builtin_data")
    builtin.prepare("shapes_captions", path)
    builtin.prepare("digits_domains", path)
    builtin.build_caption_tokenizer(path)
    return str(path)


@pytest.fixture(scope="session")
def shapes_data_dir(builtin_data_dir):
    """The data directory of ``shapes_captions`` and its tokenizer (``builtin_data_dir``)."""
    return builtin_data_dir


@pytest.fixture(scope="module")
def shared_compilation_cache():
    """``tests.trainer_child.compilation_cache`` for a whole module: its trainer runs load the
    programs an earlier run of the same config compiled. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("shared_compilation_cache")``."""
    from tests.trainer_child import compilation_cache

    with compilation_cache():
        yield
