"""Per-device bytes of parameters plus optimizer state under each mesh preset, from the compiled
train step's memory analysis.

For a CLIP preset of ``configs/clip.py`` (default ``vit_b16``) on ``--devices`` simulated CPU
devices, each mesh preset (``jaxalign.config.MESH_PRESETS``) builds the trainer's own step
(``train.setup_run(...).compile_step()``: the state's shardings from the model's logical axis rules,
``.lower().compile()`` on abstract arrays, so nothing is allocated) and reads
``compiled.memory_analysis().argument_size_in_bytes``: the bytes of one device's arguments. The
batch's share (its shard on one device: split over data and fsdp, whole over tensor) is
subtracted; what is left is the train state: parameters, AdamW's two moments, the step counter
and the guard's counters. The same figure is also computed from the state's shardings (the
shard shape of every leaf) as a check.

The global batch is set to ``--batch-per-device`` x devices: the state does not depend on it,
and a small batch keeps the compile short on CPU.

    python benchmarks/fsdp_memory.py                        # ViT-B/16, data vs fsdp vs fsdp_tensor4
    python benchmarks/fsdp_memory.py --preset vit_b32 --meshes data,fsdp
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_b16", help="a configs/clip.py preset")
    parser.add_argument("--meshes", default="data,fsdp,fsdp_tensor4", help="MESH_PRESETS names")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch-per-device", type=int, default=2)
    return parser.parse_args()


ARGS = _parse()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
)
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign import config as config_lib  # noqa: E402
from jaxalign import train  # noqa: E402
from jaxalign.parallel import batch_sharding  # noqa: E402

MIB = 2**20


def _shard_bytes(tree) -> int:
    """Bytes one device holds of ``tree``'s arrays (ShapeDtypeStructs with shardings)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
    return total


def measure(mesh_preset: str) -> dict:
    batch = ARGS.batch_per_device * ARGS.devices
    overrides = [f"train.global_batch_size={batch}", f"objective.tile={batch}"]
    config = config_lib.load(f"{ROOT}/configs/clip.py:{ARGS.preset},{mesh_preset}", overrides)
    setup = train.setup_run(config, jax.devices()[: ARGS.devices], prepare_data=False)
    compiled, _ = setup.compile_step()
    stats = compiled.memory_analysis()
    sharding = batch_sharding(setup.mesh)  # over data and fsdp, replicated over tensor
    per_device_batch = sum(
        int(np.prod(sharding.shard_shape(s.shape))) * np.dtype(s.dtype).itemsize
        for s in jax.tree.leaves(setup.task.batch_spec())
    )
    return {
        "mesh": mesh_preset,
        "shape": dict(setup.mesh.shape),
        "parameters": sum(
            int(np.prod(x.shape)) for x in jax.tree.leaves(setup.abstract_state.params)
        ),
        "compiled_state_bytes": stats.argument_size_in_bytes - per_device_batch,
        "sharding_state_bytes": _shard_bytes(setup.abstract_state),
        "temp_bytes": stats.temp_size_in_bytes,
    }


def main() -> None:
    rows = [measure(name) for name in ARGS.meshes.split(",")]
    base = rows[0]["compiled_state_bytes"]
    print(
        f"{ARGS.preset}, {rows[0]['parameters']:,} parameters, {ARGS.devices} simulated CPU "
        f"devices ({platform.processor() or platform.machine()}), jax {jax.__version__}, "
        f"{datetime.date.today()}\n"
    )
    print(f"| mesh | data x fsdp x tensor | state per device (compiled) | from shardings | "
          f"vs {rows[0]['mesh']} |")  # fmt: skip
    print("|---|---|---|---|---|")
    for row in rows:
        shape = " x ".join(str(row["shape"][a]) for a in ("data", "fsdp", "tensor"))
        print(
            f"| {row['mesh']} | {shape} | {row['compiled_state_bytes'] / MIB:,.1f} MiB | "
            f"{row['sharding_state_bytes'] / MIB:,.1f} MiB | "
            f"1/{base / row['compiled_state_bytes']:.2f} |"
        )


if __name__ == "__main__":
    main()
