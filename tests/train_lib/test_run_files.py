"""The run's small files through etils.epath: the same bytes in a local work directory and in a
(fake, local) ``gs://`` bucket, and nothing written through ``os`` for the bucket."""

import json

import pytest

from jaxalign.train_lib import run_files
from tests.fake_bucket import fake_bucket


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_json_is_written_whole_and_lines_appended(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    (root / "bucket" / "run").mkdir(parents=True)
    workdir = str(root / "bucket" / "run") if where == "local" else "gs://bucket/run"
    with fake_bucket(root):
        run_files.write_json(workdir, "summary.json", {"loss": 1.5})
        run_files.write_json(workdir, "summary.json", {"loss": 0.5})  # replaced whole
        run_files.append_json_lines(workdir, "changes.jsonl", [{"step": 1}])
        run_files.append_json_lines(workdir, "changes.jsonl", [])
        run_files.append_json_lines(workdir, "changes.jsonl", [{"step": 2}, {"step": 3}])
        assert run_files.path_of(workdir, "summary.json").is_file()
    run = root / "bucket" / "run"
    assert json.loads((run / "summary.json").read_text()) == {"loss": 0.5}
    lines = (run / "changes.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert sorted(p.name for p in run.iterdir()) == ["changes.jsonl", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # no literal gs: directory
