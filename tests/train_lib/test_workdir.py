"""The work directory: never the current directory by accident, never over files that are not a
run's, one line for a file or a read-only path, and one live run at a time (a dead one's lock is
never stale)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from jaxalign.errors import WorkdirError
from jaxalign.train_lib import workdir as workdir_lib
from jaxalign.train_lib.workdir import LOCK, MARKER, open_workdir


def test_an_empty_path_is_refused_and_nothing_is_written_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("", "  "):
        with pytest.raises(WorkdirError, match="--workdir is empty"):
            open_workdir(path)
    assert os.listdir(tmp_path) == []


def test_a_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(WorkdirError, match=f"--workdir={path}: is a file"):
        open_workdir(path)
    assert path.read_text() == "mine"


def test_a_read_only_directory_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: report the directory as read-only
        real = os.access
        monkeypatch.setattr(
            workdir_lib.os, "access", lambda p, m: False if str(p) == str(target) else real(p, m)
        )
    with pytest.raises(WorkdirError, match=f"--workdir={target}: not writable"):
        open_workdir(target)
    target.chmod(0o755)


def test_a_directory_of_other_files_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(WorkdirError, match=r"not a jaxalign run \(thesis.tex; no jaxalign-run"):
        open_workdir(tmp_path)
    assert os.listdir(tmp_path) == ["thesis.tex"]


def test_a_new_directory_is_marked_and_reopened_as_a_run(tmp_path):
    path = tmp_path / "run"
    with open_workdir(path) as opened:
        assert opened.path == str(path)
        assert sorted(os.listdir(path)) == sorted([LOCK, MARKER])
        (path / "metrics.jsonl").write_text("{}\n")
    with open_workdir(path):  # a run's own files are expected there
        pass


def test_a_second_run_is_locked_out_while_the_first_lives(tmp_path):
    with (
        open_workdir(tmp_path / "run"),
        pytest.raises(WorkdirError, match=f"another run is training there \\(pid {os.getpid()}"),
    ):
        open_workdir(tmp_path / "run")
    with open_workdir(tmp_path / "run"):  # released on close
        pass


def test_the_lock_of_a_killed_run_is_not_stale(tmp_path):
    path = tmp_path / "run"
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from jaxalign.train_lib.workdir import open_workdir
        opened = open_workdir({str(path)!r})
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirError, match=f"pid {child.pid}"):
        open_workdir(path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with open_workdir(path):  # the kernel dropped the dead process's lock
        pass


def test_other_processes_of_a_run_only_check(tmp_path):
    with open_workdir(tmp_path / "run"):
        # Process k > 0: checks the path and takes no lock (taking it here would be refused).
        follower = open_workdir(tmp_path / "run", lead=False)
        assert follower.path == str(tmp_path / "run")
        follower.close()


def test_a_run_from_before_the_marker_is_taken_as_a_run(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    with open_workdir(tmp_path):
        assert (tmp_path / MARKER).is_file()


def test_a_bucket_uri_is_marked_through_epath_alone(tmp_path, monkeypatch):
    """``gs://bucket/run`` (a local fake bucket): marked, reopened as a run, a directory of
    other files refused; nothing reaches ``os`` (no ``gs:`` directory appears here)."""
    from tests.fake_bucket import fake_bucket

    monkeypatch.chdir(tmp_path)
    bucket = tmp_path / "bucket_root"
    with fake_bucket(bucket):
        with open_workdir("gs://bucket/run") as run:
            assert run.path == "gs://bucket/run"
        assert json.loads((bucket / "bucket" / "run" / MARKER).read_text())["jaxalign"]
        with open_workdir("gs://bucket/run"):  # a run: reopened (no lock on a bucket)
            pass
        (bucket / "bucket" / "other").mkdir(parents=True)
        (bucket / "bucket" / "other" / "notes.txt").write_text("mine")
        with pytest.raises(WorkdirError, match=r"gs://bucket/other: holds files .*notes\.txt"):
            open_workdir("gs://bucket/other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket_root"]
