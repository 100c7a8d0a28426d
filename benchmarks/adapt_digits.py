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

    python benchmarks/adapt_digits.py --workdir=runs/adapt_digits --out=docs/results/adapt.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
METHODS = ("source_only", "dann", "mmd", "coral", "train_on_target")
VALIDATORS = ("neg_entropy", "info_max", "snd", "bnm", "confidence")
MAIN_RULES = ("last", "source_validation")


def _summary(workdir: str) -> dict | None:
    path = os.path.join(workdir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    return summary if summary.get("stopped") is None and "select/last/step" in summary else None


def _run(preset: str, workdir: str, seed: int, overrides: list[str]) -> float:
    command = [
        sys.executable,
        "-m",
        "jaxalign",
        "train",
        f"--config={ROOT}/configs/adapt_digits.py:{preset}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *[f"--config.{o}" for o in overrides],
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def interval(values: list[float]) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)``: the 95% Student-t interval of the mean (``nan`` spread for
    one value)."""
    from scipy import stats

    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan, math.nan
    std = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def _cell(values: list[float]) -> str:
    mean, std, low, high = interval([100 * v for v in values])
    return f"{mean:.1f} ± {std:.1f} [{low:.1f}, {high:.1f}]"


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
                _cell([s[f"select/{rule}/target_test_top1"] for s in runs])
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
    args = parser.parse_args()
    methods, targets = args.methods.split(","), args.targets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    total = len(methods) * len(targets) * len(seeds)
    done = 0
    for target in targets:
        for method in methods:
            results[(method, target)] = []
            for seed in seeds:
                workdir = os.path.join(args.workdir, f"{method},{target}", f"seed{seed}")
                summary = _summary(workdir)
                if summary is None:
                    seconds = _run(f"{method},{target}", workdir, seed, args.override)
                    summary = _summary(workdir)
                    print(
                        f"[{done + 1}/{total}] {method},{target} seed {seed}: {seconds:.0f} s",
                        flush=True,
                    )
                done += 1
                results[(method, target)].append(summary)
    report = table(results, methods, targets)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
