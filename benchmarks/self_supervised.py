"""Label efficiency of self-supervised pretraining on digits_domains' source images: SimCLR, the
autoencoder and MAE against their encoders at initialisation and against raw pixels; and MLM's
masked-token accuracy against the most-frequent-token baseline.

For each seed: the ``digits`` presets of ``configs/simclr.py``, ``configs/autoencoder.py`` and
``configs/mae.py`` and the ``captions`` preset of ``configs/mlm.py`` are trained in
``WORKDIR/<task>/seed<k>`` (finished runs skipped), each probed at its last step (no selection)
by its own evals (``jaxalign.tasks.probe_evals``: linear probe with ``C`` cross-validated on
the training features, weighted k-NN with k = 20 at temperature 0.07, full and 1 / 5 / 10 / 25
labelled examples per class, 3 draws each; ``source_train`` -> ``source_test``). Baselines,
computed here with the same evals and seed: each task's encoder at its initialisation (the
parameters ``seed`` gives, batch norm at its initial statistics) and the raw pixels (the
normalised 32 x 32 x 3 image flattened). Per cell: mean ± std [95% t-interval] over seeds.

    python benchmarks/self_supervised.py --workdir=runs/ssl --seeds=0,1,2 --jobs=2
"""

from __future__ import annotations

import argparse
import functools
import os
import time

from study_runs import (
    ROOT,
    cell,
    publish,
    run_parallel,
    train,
)  # benchmarks/, the script's own folder

IMAGE_TASKS = {"simclr": "digits", "autoencoder": "digits", "mae": "digits"}
SHOTS = ("", "1shot/", "5shot/", "10shot/", "25shot/")
COLUMNS = [(f"{s}{p}_top1", f"{s or 'full '}{p}") for s in SHOTS for p in ("linear", "knn")]


def baselines(task_name: str, seed: int, pixels: bool) -> dict[str, dict[str, float]]:
    """``{"init": ...}`` (and ``"pixels"`` with ``pixels``): the probe metrics
    (``eval/probe/...``) of the task's encoder at initialisation and of raw pixels, with the
    task's digits preset and ``seed``."""
    import flax.linen as nn
    import jax

    from jaxalign import config as config_lib
    from jaxalign.parallel import make_mesh
    from jaxalign.tasks import get_task
    from jaxalign.tasks.probe_evals import pixel_features

    spec = os.path.join(ROOT, "configs", f"{task_name}.py") + f":{IMAGE_TASKS[task_name]}"
    config = config_lib.load(spec, [f"seed={seed}"])
    mesh = make_mesh(dict(config.mesh), jax.devices())
    task = get_task(config, mesh)
    task.prepare_data()
    variables = nn.unbox(task.init(jax.random.key(config.seed)))
    init = task.evaluate(variables)
    out = {"init": {f"eval/{k}": v for k, v in init.items()}}
    if pixels:
        scores = task.probe.evaluate(jax.jit(pixel_features), {})
        out["pixels"] = {f"eval/{k}": v for k, v in scores.items()}
    return out


def table(rows: dict[str, list[dict]], seeds: str) -> str:
    lines = [
        f"Top-1 accuracy (%) on source_test, mean ± std [95% t-interval] over seeds {seeds}:",
        "",
        "| encoder | " + " | ".join(name for _, name in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, runs in rows.items():
        cells = [cell([r[f"eval/probe/{key}"] for r in runs]) for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (2 on 2 cores)")
    parser.add_argument("--out", help="also write the Markdown tables here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = {
        **{t: f"configs/{t}.py:{p}" for t, p in IMAGE_TASKS.items()},
        "mlm": "configs/mlm.py:captions",
    }
    runs = [(task, seed) for task in specs for seed in seeds]
    started = time.perf_counter()
    calls = {
        (t, s): functools.partial(train, specs[t], os.path.join(args.workdir, t, f"seed{s}"), s, [])
        for t, s in runs
    }
    summaries = run_parallel(args.jobs, calls)
    print(f"{len(runs)} runs, {args.jobs} at a time: {time.perf_counter() - started:.0f} s")

    rows: dict[str, list[dict]] = {}
    for task in IMAGE_TASKS:
        rows[f"{task} (pretrained)"] = [summaries[(task, s)] for s in seeds]
        base = [baselines(task, s, pixels=task == "simclr") for s in seeds]
        rows[f"{task} encoder at initialisation"] = [b["init"] for b in base]
        if task == "simclr":  # the probes of every digits preset are the same
            pixels = [b["pixels"] for b in base]
    rows["raw pixels"] = pixels
    print(f"with baselines: {time.perf_counter() - started:.0f} s")
    mlm = [summaries[("mlm", s)] for s in seeds]
    report = (
        table(rows, args.seeds)
        + "\n\nMasked-token accuracy (%) on shapes_captions' validation captions, mean ± std "
        + f"[95% t-interval] over seeds {args.seeds}:\n\n"
        + "| model | masked-token top-1 | most-frequent-token baseline | perplexity |\n"
        + "|---|---|---|---|\n"
        + f"| mlm `captions` | {cell([r['eval/mlm/accuracy'] for r in mlm])} | "
        + f"{cell([r['eval/mlm/majority_accuracy'] for r in mlm])} | "
        + f"{cell([r['eval/mlm/perplexity'] for r in mlm], scale=1.0)} |\n"
    )
    publish(report, args.out)


if __name__ == "__main__":
    main()
