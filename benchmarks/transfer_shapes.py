"""Transfer from the CLIP demo to few-shot classification: scratch vs fine-tuned vs linear probe.

A study script (until ``jaxalign study`` exists): for each arm of ``configs/classify.py``
(``shapes_scratch``, ``shapes_finetune``, ``shapes_probe``), each learning rate of ``--lrs`` and
each seed of ``--seeds``, one run of ``jaxalign train`` in its own work directory (a finished
run is skipped, an unfinished one resumes). Every run learns the 24 (colour, shape) classes of
shapes_captions from 10 labelled train images per class (drawn by the seed) and is scored, at
its last step, on the two halves of the validation split: ``validation[:256]`` (dev) and
``validation[256:]`` (test); no run reads either half before that.

Protocol: per arm, the learning rate with the best mean dev top-1 over the seeds is selected
(the grid reaches past every arm's choice: a choice at the grid's edge means the grid is too
short); its test top-1 is reported as mean, sample standard deviation (ddof 1) and the
per-seed values, with the paired difference to scratch (same seed, same labelled images). Test
figures never steer a choice. The CLIP run is ``configs/clip.py:demo`` (seed 0), trained first
unless ``--clip-run`` names one. Since 2026-12-08 that demo is 300 steps with label smoothing
0.05; docs/results/transfer_shapes.md was measured from the 500-step demo before it.

    python benchmarks/transfer_shapes.py --workdir=runs/transfer_shapes
    python benchmarks/transfer_shapes.py --workdir=runs/transfer_shapes --out=report.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("shapes_scratch", "shapes_finetune", "shapes_probe")
DEV, TEST = "eval/validation[:256]/top1", "eval/validation[256:]/top1"


def _run(args: list[str]) -> None:
    command = [sys.executable, "-m", "jaxalign", "train", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def _summary(workdir: str) -> dict | None:
    path = os.path.join(workdir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _stats(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--clip-run", help="a finished configs/clip.py:demo run to transfer from")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2,1e-1,3e-1,1")
    parser.add_argument("--data-dir", default="~/.cache/jaxalign/datasets")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = args.lrs.split(",")
    workdir = os.path.abspath(args.workdir)
    data = [f"--config.data.data_dir={args.data_dir}"]

    clip_run = os.path.abspath(args.clip_run or os.path.join(workdir, "clip_demo"))
    if _summary(clip_run) is None:
        print(f"training the CLIP demo in {clip_run}", flush=True)
        _run(["--config=configs/clip.py:demo", f"--workdir={clip_run}", *data])
    results: dict[tuple[str, str], list[dict]] = {}
    for arm in ARMS:
        for lr in lrs:
            for seed in seeds:
                run = os.path.join(workdir, arm, f"lr{lr}", f"seed{seed}")
                if _summary(run) is None:
                    print(f"{arm} lr {lr} seed {seed}", flush=True)
                    overrides = [f"--config.optim.lr={lr}", f"--config.seed={seed}", *data]
                    if arm != "shapes_scratch":
                        overrides.append(f"--config.init_from.workdir={clip_run}")
                    _run([f"--config=configs/classify.py:{arm}", f"--workdir={run}", *overrides])
                results.setdefault((arm, lr), []).append(_summary(run))

    lines = [f"CLIP run: {clip_run}; seeds {seeds}; learning rates {lrs}", ""]
    lines += ["| arm | lr | dev top-1 (mean ± std) | test top-1 (mean ± std) |"]
    lines += ["|---|---|---|---|"]
    chosen = {}
    for arm in ARMS:
        best = max(lrs, key=lambda lr: statistics.mean(r[DEV] for r in results[(arm, lr)]))
        chosen[arm] = best
        for lr in lrs:
            runs = results[(arm, lr)]
            mark = " (selected on dev)" if lr == best else ""
            dev, test = [r[DEV] for r in runs], [r[TEST] for r in runs]
            lines.append(f"| {arm} | {lr}{mark} | {_stats(dev)} | {_stats(test)} |")
    lines += ["", "| arm | selected lr | test top-1 | per seed | minus scratch (paired) |"]
    lines += ["|---|---|---|---|---|"]
    scratch = [r[TEST] for r in results[("shapes_scratch", chosen["shapes_scratch"])]]
    for arm in ARMS:
        test = [r[TEST] for r in results[(arm, chosen[arm])]]
        gains = [a - b for a, b in zip(test, scratch, strict=True)]
        per_seed = ", ".join(f"{v:.3f}" for v in test)
        gain = "-" if arm == "shapes_scratch" else _stats(gains)
        lines.append(f"| {arm} | {chosen[arm]} | {_stats(test)} | {per_seed} | {gain} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
