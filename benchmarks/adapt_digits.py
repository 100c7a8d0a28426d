"""Domain adaptation on digits_domains: every method x target domain x seed, and the table of
target test accuracy under honest selection rules.

A study script (until ``jaxalign study`` exists). For each method of ``configs/adapt_digits.py``
(``--methods``), each target domain (``--targets``: source -> blend, source -> rotated) and
each seed (``--seeds``), one run of ``jaxalign train`` in ``WORKDIR/<method>,<target>/seed<k>``
(a finished run is skipped, an unfinished one resumes; extra ``--override``s go to every run).
Each run evaluates every ``train.eval_every`` steps and its ``summary.json`` holds, per
selection rule, the chosen eval step and the target test accuracy there.

Rules: ``last`` (the last step), ``source_validation`` (the best source validation accuracy),
each label-free validator (on the unlabelled target validation split; see
``jaxalign.evals.domain``), and ``oracle`` (the best target test accuracy itself: shown apart,
it reads the test labels). The "best validator" column names the one validator whose choices
have the highest mean over every run of the table; choosing it reads target labels once for
the whole benchmark (as Musgrave et al. 2022 compare validators), so it is marked as such.

Per cell: mean, sample standard deviation (ddof 1) and a 95% Student-t interval of the mean
over the seeds, ``mean +- t_{0.975, n-1} * std / sqrt(n)``.

``--jobs`` runs that many at a time (each its own process; a failed run stops the table).

    python benchmarks/adapt_digits.py --workdir=runs/adapt_digits --jobs=2 \
        --out=docs/results/adapt.md
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

from study_runs import cell, publish, run_parallel, train  # benchmarks/, the script's own folder

METHODS = ("source_only", "dann", "mmd", "coral", "train_on_target")
VALIDATORS = ("neg_entropy", "info_max", "snd", "bnm", "confidence")
MAIN_RULES = ("last", "source_validation")


def table(results: dict, methods, targets) -> str:
    """Markdown tables from ``results[(method, target)] = [summary per seed]``."""
    every = [s for runs in results.values() for s in runs]
    means = {
        v: statistics.mean(s[f"select/{v}/target_test_top1"] for s in every) for v in VALIDATORS
    }
    best = max(means, key=means.get)
    lines = [
        "Target test top-1 (%), mean ± std [95% t-interval] over seeds, by selection rule:",
        "",
        f"| pair | method | last | source validation | best validator ({best}) "
        "| oracle (reads test labels) |",
        "|---|---|---|---|---|---|",
    ]
    for target in targets:
        for method in methods:
            runs = results[(method, target)]
            cells = [
                cell([s[f"select/{rule}/target_test_top1"] for s in runs])
                for rule in (*MAIN_RULES, best, "oracle")
            ]
            lines.append(f"| source -> {target} | {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Every label-free validator (mean target test top-1 % of its choices, all runs above):",
        "",
        "| " + " | ".join(VALIDATORS) + " |",
        "|" + "---|" * len(VALIDATORS),
        "| " + " | ".join(f"{100 * means[v]:.1f}" for v in VALIDATORS) + " |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default="blend,rotated")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE, every run")
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (2 on 2 cores)")
    args = parser.parse_args()
    methods, targets = args.methods.split(","), args.targets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = [(method, target) for target in targets for method in methods]
    runs = [(m, t, seed) for m, t in cells for seed in seeds]
    started = time.perf_counter()

    def run(method: str, target: str, seed: int) -> dict:
        workdir = os.path.join(args.workdir, f"{method},{target}", f"seed{seed}")
        return train(f"configs/adapt_digits.py:{method},{target}", workdir, seed, args.override)

    summaries = run_parallel(args.jobs, {key: functools.partial(run, *key) for key in runs})
    results = {(m, t): [summaries[(m, t, seed)] for seed in seeds] for m, t in cells}
    print(f"{len(runs)} runs, {args.jobs} at a time: {time.perf_counter() - started:.0f} s")
    report = table(results, methods, targets)
    publish(report, args.out)


if __name__ == "__main__":
    main()
