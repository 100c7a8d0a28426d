"""Study: source-only vs DANN vs MMD vs CORAL on ``digits_domains``, each target domain, 5 seeds,
the target test accuracy under every selection rule.

    jaxalign study --config=configs/studies/adapt_digits.py --workdir=studies/adapt_digits

Each run is ``configs/adapt_digits.py`` (500 steps, batch 64 per domain, evals every 50 steps)
with the method and target of its cell. The labelled source is always ``source`` (the
scikit-learn digits); the targets are the two shifted domains the dataset holds, ``blend``
(photo blends) and ``rotated`` (turned, noisy digits), unlabelled while training. The rules
(``summary.json``'s ``select/<rule>/target_test_top1``): the last eval, the best source
validation accuracy, each label-free validator on the unlabelled target validation split, and
the oracle (the best target test accuracy: it reads the test labels, reported apart). Across
the two targets the report gives each method's interquartile mean and its probability of
improving on source-only (stratified bootstrap). ``metrics.jsonl`` keeps wall-clock figures
out (``train.timing_in_metrics=False``): a run repeated on a CPU writes the same bytes.
"""

from __future__ import annotations

METHODS = ("source_only", "dann", "mmd", "coral")
TARGETS = ("blend", "rotated")
RULES = (
    ("last", "last eval", False),
    ("source_validation", "best source validation", False),
    ("neg_entropy", "validator: negative entropy", False),
    ("info_max", "validator: information maximisation", False),
    ("snd", "validator: soft neighbourhood density", False),
    ("bnm", "validator: batch nuclear norm", False),
    ("confidence", "validator: mean confidence", False),
    ("oracle", "best target test", True),
)


def _target(name: str) -> tuple[str, ...]:
    return (f"data.target_split={name}_train", f"evals.target_validation={name}_validation",
            f"evals.target_test={name}_test")  # fmt: skip


def get_study() -> dict:
    return dict(
        base="configs/adapt_digits.py:source_only",
        overrides=("train.timing_in_metrics=False",),
        axes={
            "target": {name: _target(name) for name in TARGETS},
            "method": {name: (f"objective.method={name}",) for name in METHODS},
        },
        seeds=(0, 1, 2, 3, 4),
        metrics=tuple(
            {
                "key": f"select/{rule}/target_test_top1",
                "label": f"target top-1, {label}",
                "oracle": oracle,
            }
            for rule, label, oracle in RULES
        ),
        baseline="target=blend,method=source_only",
        task_axis="target",
        curves=("loss", "eval/source_validation_top1", "eval/oracle/target_test_top1"),
    )
