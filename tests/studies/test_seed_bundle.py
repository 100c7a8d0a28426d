"""Seeds trained as one compiled program (``vmap_seeds``): each seed's losses and evals are
those of its own run on one device, its run directory is a finished run the report reads."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxalign import cli, train
from jaxalign import config as config_lib
from jaxalign.schema import ConfigError
from jaxalign.studies import seed_bundle
from jaxalign.studies import study as study_lib
from jaxalign.train_lib.metric_writers import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]

STUDY = """
def get_study():
    return dict(
        base="{base}",
        overrides=("data.data_dir={data}", "objective.method=source_only",
                   "train.timing_in_metrics=False"),
        axes={{"method": {{"source_only": ()}}}},
        seeds=(0, 1),
        metrics=({{"key": "select/source_validation/target_test_top1", "label": "top-1"}},),
        vmap_seeds=True,
    )
"""


def test_bundled_seeds_match_their_own_runs(tmp_path, builtin_data_dir, capsys):
    path = tmp_path / "bundle_study.py"
    path.write_text(STUDY.format(base=ROOT / "configs" / "adapt_digits.py:tiny",
                                 data=builtin_data_dir))  # fmt: skip
    workdir = tmp_path / "study"
    assert cli.main(["study", f"--config={path}", f"--workdir={workdir}"]) == 0
    out = capsys.readouterr().out
    assert "runs 1-2/2: method=source_only (one program)" in out
    assert "2 done, 0 running, 0 failed, 0 pending" in out
    study = study_lib.load_study(str(path))
    for run in study_lib.expand(study):
        bundled = workdir / "runs" / run.hash
        env = json.loads((bundled / "env.json").read_text())
        assert env["seed_bundle"] == [0, 1] and env["seed"] == run.seed
        alone = tmp_path / f"alone_{run.seed}"
        config = config_lib.load(study.base, run.overrides)
        train.train_and_evaluate(config, str(alone), devices=jax.devices()[:1])
        rows = {r["step"]: r for r in read_metrics(bundled) if "loss" in r}
        reference = {r["step"]: r for r in read_metrics(alone) if "loss" in r}
        assert sorted(rows) == sorted(reference) == list(range(1, config.train.steps + 1))
        for step, row in rows.items():
            for key in ("loss", "classification", "grad_norm", "accuracy", "lr"):
                np.testing.assert_allclose(row[key], reference[step][key], rtol=1e-5, atol=1e-6)
        evals = [r for r in read_metrics(bundled) if "eval/source_validation_top1" in r]
        expected = [r for r in read_metrics(alone) if "eval/source_validation_top1" in r]
        assert [r["step"] for r in evals] == [r["step"] for r in expected] == [3, 6]
        for got, want in zip(evals, expected, strict=True):
            for key, value in want.items():
                np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        summary = json.loads((bundled / "summary.json").read_text())
        reference_summary = json.loads((alone / "summary.json").read_text())
        for key in [k for k in reference_summary if k.startswith("select/")]:
            np.testing.assert_allclose(summary[key], reference_summary[key], rtol=1e-5)
    assert "| method=source_only | top-1 |" in (workdir / "report.md").read_text()


def test_a_bundle_refuses_configs_that_differ_beyond_the_seed():
    spec = "configs/adapt_digits.py:tiny"
    one, other = (config_lib.load(str(ROOT / spec), [f"seed={s}"]) for s in (0, 1))
    seed_bundle.check_bundle([one, other])
    lr = config_lib.override(other, ["optim.lr=0.5"])
    with pytest.raises(ConfigError, match=r"differ beyond the seed: \['optim.lr'\]"):
        seed_bundle.check_bundle([one, lr])
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        seed_bundle.check_bundle([one, one])
    transfer = [config_lib.override(c, ["init_from.workdir=/runs/a"]) for c in (one, other)]
    with pytest.raises(ConfigError, match=r"init_from\.workdir='/runs/a'"):
        seed_bundle.check_bundle(transfer)


def test_a_bundle_compiles_init_once_and_gives_each_seed_its_own_runs_init(builtin_data_dir):
    from jaxalign.parallel.sharding import sharded_init

    spec = str(ROOT / "configs/adapt_digits.py:tiny")
    # The data directory is the session's: the task reads the class names from the dataset.
    overrides = [f"data.data_dir={builtin_data_dir}"]
    configs = [config_lib.load(spec, [f"seed={s}", *overrides]) for s in (0, 1)]
    setups = [train.setup_run(c, jax.devices()[:1], prepare_data=False) for c in configs]
    traces = []

    def counted(init_state):
        def init(rng):
            traces.append(rng)
            return init_state(rng)

        return init

    stacked = seed_bundle._init([s._replace(init_state=counted(s.init_state)) for s in setups])
    assert len(traces) == 1  # one trace of any seed's init: one compiled program for all
    for n, setup in enumerate(setups):
        own, _ = sharded_init(setup.init_state, setup.mesh, setup.rng)
        for mine, bundled in zip(jax.tree.leaves(own), jax.tree.leaves(stacked), strict=True):
            np.testing.assert_array_equal(mine, bundled[n])  # bit for bit, not to rounding
