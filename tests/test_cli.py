"""The installed ``jaxalign`` command."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxalign import cli


def test_env_reports_devices_and_versions(capsys):
    assert cli.main(["env"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device_count"] == 8  # the tests' simulated CPU devices
    assert report["process_count"] == 1
    assert report["versions"]["jax"].startswith("0.")
    assert report["backend"] == "cpu"


def test_console_script_is_installed():
    script = shutil.which("jaxalign") or os.path.join(os.path.dirname(sys.executable), "jaxalign")
    if not os.path.exists(script):
        pytest.fail(f"the jaxalign console script is not installed beside {sys.executable}")
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("jaxalign ")


def test_unknown_command_fails():
    with pytest.raises(SystemExit) as raised:
        cli.main(["frobnicate"])
    assert raised.value.code == 2
