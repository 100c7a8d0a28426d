"""Study: the CLIP demo's global batch x a learned or a fixed temperature, 3 seeds.

    jaxalign study --config=configs/studies/clip_batch_temperature.py \
        --workdir=studies/clip_batch_temperature

Each run is the CLIP demo's model and data at the 500-step recipe without label smoothing
(``configs/clip.py:demo`` as it was before 2026-12-08, the overrides below) at a
global batch of 32, 64 or 128 examples, with the InfoNCE temperature learned from CLIP's
initial 1/0.07 (Radford et al. 2021) or fixed there. The same number of steps at every batch:
the larger batches see more examples and more negatives per step. Reported: zero-shot top-1
on the held-out (colour, shape) pairs and image -> text recall@1, at the last step (the only
rule: these splits are test splits, never used to choose). About 4 minutes a run on 2 CPU
cores at batch 128, 18 runs. ``metrics.jsonl`` keeps wall-clock figures out
(``train.timing_in_metrics=False``).
"""

from __future__ import annotations


def get_study() -> dict:
    return dict(
        base="configs/clip.py:demo",
        overrides=(
            "train.timing_in_metrics=False",
            # The 500-step recipe (configs/clip.py base()): no smoothing to blur the temperature.
            "train.steps=500",
            "train.eval_every=250",
            "train.checkpoint_every=250",
            "objective.label_smoothing=0.0",
        ),
        axes={
            "batch": {f"b{n}": (f"train.global_batch_size={n}",) for n in (32, 64, 128)},
            "temperature": {
                "learned": ("model.learn_temperature=True",),
                "fixed": ("model.learn_temperature=False",),
            },
        },
        seeds=(0, 1, 2),
        metrics=(
            {"key": "eval/zeroshot_top1", "label": "zero-shot top-1"},
            {"key": "eval/retrieval/i2t_r1", "label": "image -> text R@1"},
        ),
        baseline="batch=b128,temperature=learned",
        curves=("loss", "logit_scale"),
    )
