"""Seeds as one program against one run per seed: the digits source-only cell (``configs/
adapt_digits.py:source_only``, source -> blend, 500 steps) with seeds 0-4, trained by
``jaxalign study`` one seed after another (``--mode=sequential``) or as one vmapped program
(``--mode=bundled``, the study's ``vmap_seeds``), each timed from the study's start to its report;
``--mode=compare`` then prints, per seed, the largest difference of the logged losses and of the
chosen target accuracies between the two.

    python benchmarks/seed_bundle.py --workdir=/tmp/seed_bundle --mode=sequential
    python benchmarks/seed_bundle.py --workdir=/tmp/seed_bundle --mode=bundled
    python benchmarks/seed_bundle.py --workdir=/tmp/seed_bundle --mode=compare

Each timing mode starts from an empty study directory (``WORKDIR/<mode>``). ``--override=KEY=VALUE``
(repeatable) changes the cell's config for a timing, e.g. ``data.example_cache_mb=0`` (no example
cache); such a run goes to ``WORKDIR/<mode>-<overrides>`` and ``--mode=compare`` ignores it.
Like the ``jaxalign`` command, the script starts itself again with glibc's huge-pages tunable
for malloc (``jaxalign.host_memory``; ``JAXALIGN_HUGE_PAGES=0``: without).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from jaxalign import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = """
def get_study():
    return dict(
        base="{root}/configs/adapt_digits.py:source_only,blend",
        overrides=("train.timing_in_metrics=False", {overrides}),
        axes={{"method": {{"source_only": ()}}}},
        seeds=(0, 1, 2, 3, 4),
        metrics=({{"key": "select/source_validation/target_test_top1",
                   "label": "target top-1, best source validation"}},),
        vmap_seeds={bundled},
    )
"""


def study_file(workdir: str, mode: str, overrides: tuple[str, ...] = ()) -> str:
    name = "-".join((mode, *overrides))
    path = os.path.join(workdir, f"{name}_study.py")
    with open(path, "w") as f:
        f.write(STUDY.format(
            root=ROOT, bundled=mode == "bundled", overrides=", ".join(map(repr, overrides))
        ))  # fmt: skip
    return path


def run(workdir: str, mode: str, overrides: tuple[str, ...] = ()) -> None:
    from jaxalign import cli

    name = "-".join((mode, *overrides))
    study_dir = os.path.join(workdir, name)
    shutil.rmtree(study_dir, ignore_errors=True)
    started = time.perf_counter()
    config = study_file(workdir, mode, overrides)
    code = cli.main(["study", f"--config={config}", f"--workdir={study_dir}"])
    print(f"{name}: exit {code}, {time.perf_counter() - started:.1f} s from start to report")


def compare(workdir: str) -> None:
    from jaxalign.studies import study as study_lib
    from jaxalign.train_lib.metric_writers import read_metrics

    runs = study_lib.expand(study_lib.load_study(study_file(workdir, "bundled")))
    print("| seed | max abs loss difference (logged steps) | loss at the last step | "
          "target top-1 (source validation), sequential / bundled |")  # fmt: skip
    print("|---|---|---|---|")
    for run in runs:
        paths = [os.path.join(workdir, m, "runs", run.hash) for m in ("sequential", "bundled")]
        losses = [{r["step"]: r["loss"] for r in read_metrics(p) if "loss" in r} for p in paths]
        worst = max(abs(losses[0][s] - losses[1][s]) for s in losses[0])
        last = max(losses[0])
        summaries = []
        for path in paths:
            with open(os.path.join(path, "summary.json")) as f:
                summaries.append(json.load(f)["select/source_validation/target_test_top1"])
        print(f"| {run.seed} | {worst:.3g} | {losses[0][last]:.6g} / {losses[1][last]:.6g} | "
              f"{summaries[0]:.4f} / {summaries[1]:.4f} |")  # fmt: skip


def main() -> None:
    # As the ``jaxalign`` command does: huge pages for malloc (``jaxalign.host_memory``).
    host_memory.restart_with_huge_pages()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--mode", choices=("sequential", "bundled", "compare"), required=True)
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE, repeatable")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.mode == "compare":
        compare(args.workdir)
    else:
        run(args.workdir, args.mode, tuple(args.override))


if __name__ == "__main__":
    sys.exit(main())
