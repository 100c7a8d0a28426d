"""CLIP adapted to shapes_captions' outline domain: zero-shot on both domains' test scenes, with
and without the adaptation term, over seeds.

For each preset of ``--presets`` (``configs/clip.py:demo_adapt_none``, ``..._mmd``,
``..._dann``) and each seed, one run in ``WORKDIR/<preset>/seed<k>`` (finished runs skipped,
extra ``--override``s to every run). Every run trains the CLIP demo on the filled-shape
training pairs; the MMD / DANN runs also read the unlabelled ``outline_train`` images. Each is
scored at its last step (no selection) by zero-shot top-1 on ``test`` (the source domain: the
held-out colour-shape pairs) and on ``outline_test`` (the same scenes drawn as outlines on
textured backgrounds); also on ``heldout_validation`` (held-out pairs, other scenes: the
split to choose ``adapt.weight`` on). Per cell: mean ± std [95% Student-t interval] over the
seeds, and each method's differences to ``none`` on both domains, paired by seed.

    python benchmarks/clip_adapt_shapes.py --workdir=runs/clip_adapt --seeds=0,1,2
"""

from __future__ import annotations

import argparse
import os

from study_runs import cell, publish, train  # benchmarks/, the script's own folder

SOURCE, TARGET = "eval/zeroshot_top1", "eval/target/zeroshot_top1"
SOURCE_VALIDATION = "eval/source_validation/zeroshot_top1"  # heldout_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--presets", default="none,mmd")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE, every run")
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {}
    for method in args.presets.split(","):
        results[method] = []
        for seed in seeds:
            workdir = os.path.join(args.workdir, f"demo_adapt_{method}", f"seed{seed}")
            summary = train(f"configs/clip.py:demo_adapt_{method}", workdir, seed, args.override)
            print(f"{method} seed {seed}: {summary['wall_s']:.0f} s", flush=True)
            results[method].append(summary)
    columns = (SOURCE_VALIDATION, SOURCE, TARGET)
    lines = [
        "Zero-shot top-1 (%) at the last step, mean ± std [95% t-interval] over seeds "
        f"{args.seeds}; the differences to none are paired by seed:",
        "",
        "| method | source (heldout_validation) | source (test) | target (outline_test) "
        "| heldout_validation - none | test - none | target - none |",
        "|---|---|---|---|---|---|---|",
    ]
    base = results.get("none")
    for method, runs in results.items():
        cells = [_cell(runs, key) for key in columns]
        if base is not None and method != "none":
            cells += [_cell(runs, key, base) for key in columns]
        else:
            cells += ["-"] * len(columns)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    publish(report, args.out)


def _cell(runs: list[dict], key: str, base: list[dict] | None = None) -> str:
    """``key``'s values over ``runs`` (minus ``base``'s, seed by seed), or ``-`` where a run
    lacks it (runs from before the ``heldout_validation`` eval existed)."""
    if not all(key in r for r in runs + (base or [])):
        return "-"
    if base is None:
        return cell([r[key] for r in runs])
    return cell([r[key] - b[key] for r, b in zip(runs, base, strict=True)])


if __name__ == "__main__":
    main()
