"""Train-step throughput: jaxalign's jitted CLIP step against PyTorch ``transformers.CLIPModel``.

Both sides are the same network with the same initial weights: a ``CLIPModel`` is built from a
``CLIPConfig`` (random init), saved as safetensors, and loaded into jaxalign with
``jaxalign.interop.hf.load_clip`` (tested equal to ``get_image_features`` /
``get_text_features``). Each side then runs the same step on the same random batch: forward
both towers, CLIP's symmetric InfoNCE, backward, AdamW. jaxalign's step is
``jaxalign.train_lib.make_train_step`` (jitted, donated state, the non-finite guard) on one
device; PyTorch's is the usual eager loop (``loss.backward(); opt.step()``) on all CPU threads.

Prints one markdown table (examples/s, median over ``--repeats`` timed runs of ``--steps`` steps
after warm-up) and the ratio.

    python benchmarks/train_step.py                      # the default: a small ViT-B-shaped CLIP
    python benchmarks/train_step.py --batch 64 --patch 16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

from jaxalign import host_memory


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--width", type=int, default=128, help="both towers' width")
    parser.add_argument("--depth", type=int, default=4, help="both towers' depth")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--text-length", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


ARGS = _parse()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Both sides with huge pages for malloc, as the ``jaxalign`` command runs (``jaxalign.host_memory``;
# ``JAXALIGN_HUGE_PAGES=0``: without): the script starts itself again before importing more.
host_memory.restart_with_huge_pages()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from jaxalign import objectives  # noqa: E402
from jaxalign.interop import hf  # noqa: E402
from jaxalign.parallel import batch_sharding, make_mesh  # noqa: E402
from jaxalign.train_lib import TrainState, make_train_step  # noqa: E402

LR, WEIGHT_DECAY, BETAS, EPS = 1e-4, 0.1, (0.9, 0.98), 1e-6


def _clip_config() -> transformers.CLIPConfig:
    mlp = 4 * ARGS.width
    return transformers.CLIPConfig(
        text_config=dict(
            vocab_size=ARGS.vocab,
            hidden_size=ARGS.width,
            intermediate_size=mlp,
            num_hidden_layers=ARGS.depth,
            num_attention_heads=ARGS.heads,
            max_position_embeddings=ARGS.text_length,
            eos_token_id=ARGS.vocab - 1,
        ),
        vision_config=dict(
            hidden_size=ARGS.width,
            intermediate_size=mlp,
            num_hidden_layers=ARGS.depth,
            num_attention_heads=ARGS.heads,
            image_size=ARGS.image_size,
            patch_size=ARGS.patch,
        ),
        projection_dim=ARGS.embed_dim,
    )


def _batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, ARGS.vocab - 1, size=(ARGS.batch, ARGS.text_length)).astype(np.int64)
    ids[:, -1] = ARGS.vocab - 1  # every sequence ends with the end-of-text token
    images = rng.normal(size=(ARGS.batch, ARGS.image_size, ARGS.image_size, 3))
    return {
        "image": images.astype(np.float32),
        "ids": ids,
        "mask": np.ones_like(ids),
    }


def _time(run_steps) -> float:
    """Median examples/s over the repeats; ``run_steps(n)`` runs n steps and waits for them."""
    run_steps(2)  # warm-up (compilation, allocator)
    rates = []
    for _ in range(ARGS.repeats):
        start = time.perf_counter()
        run_steps(ARGS.steps)
        rates.append(ARGS.steps * ARGS.batch / (time.perf_counter() - start))
    return statistics.median(rates)


def jaxalign_rate(path: str, batch: dict[str, np.ndarray]) -> tuple[float, int]:
    model, variables = hf.load_clip(path)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)

    def loss_and_grad(params, model_state, batch, rng, step):
        def loss_fn(params):
            out, _ = model.apply({"params": params}, batch["image"], batch["ids"], batch["mask"])
            return objectives.clip_loss(out["image"], out["text"], out["logit_scale"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return loss, grads, model_state, {}

    sharding = batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    state = jax.device_put(TrainState.create(variables, tx), replicated)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = make_train_step(
        loss_and_grad,
        tx,
        seed=0,
        ema_decay=0.0,
        state_shardings=shardings,
        batch_sharding=sharding,
    )
    device_batch = jax.device_put(
        {"image": batch["image"], "ids": batch["ids"].astype(np.int32), "mask": batch["mask"]},
        sharding,
    )
    params = sum(x.size for x in jax.tree.leaves(variables["params"]))

    def run_steps(n):
        nonlocal state
        for _ in range(n):
            state, metrics = step(state, device_batch)
        jax.block_until_ready(metrics["loss"])

    return _time(run_steps), params


def torch_rate(model: transformers.CLIPModel, batch: dict[str, np.ndarray]) -> tuple[float, int]:
    torch.set_num_threads(os.cpu_count() or 1)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    pixels = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
    ids, mask = torch.from_numpy(batch["ids"]), torch.from_numpy(batch["mask"])

    def run_steps(n):
        for _ in range(n):
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return _time(run_steps), sum(p.numel() for p in model.parameters())


def main() -> None:
    torch.manual_seed(0)
    reference = transformers.CLIPModel(_clip_config())
    batch = _batch()
    with tempfile.TemporaryDirectory() as path:
        reference.save_pretrained(path, safe_serialization=True)
        print(f"# jaxalign step (jax {jax.__version__})", file=sys.stderr)
        ours, ours_params = jaxalign_rate(path, batch)
    print(f"# PyTorch step (torch {torch.__version__})", file=sys.stderr)
    theirs, theirs_params = torch_rate(reference, batch)
    assert ours_params == theirs_params, (ours_params, theirs_params)
    print(
        f"# train_step: CLIP ViT width {ARGS.width}, depth {ARGS.depth} (both towers), "
        f"{ARGS.image_size}px / patch {ARGS.patch}, text length {ARGS.text_length}, "
        f"batch {ARGS.batch}, {ours_params:,} parameters; {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| implementation | examples/s | vs PyTorch |")
    print("|---|---|---|")
    print(f"| PyTorch {torch.__version__} transformers.CLIPModel, AdamW | {theirs:.1f} | 1.00x |")
    print(
        f"| jaxalign (jax {jax.__version__}) make_train_step | {ours:.1f} | {ours / theirs:.2f}x |"
    )


if __name__ == "__main__":
    main()
