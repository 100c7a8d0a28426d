"""The ``jaxalign`` command: subcommands over the library's entry points.

jaxalign train --config=configs/clip.py:demo --workdir=runs/demo [--config.KEY=VALUE ...]
jaxalign eval --workdir=runs/demo   # the run's evals again, from its newest checkpoint
jaxalign env                        # versions, devices, processes and commit, as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from jaxalign import __version__


def _env(_: argparse.Namespace) -> int:
    from jaxalign import environment  # imports jax: keep `jaxalign --help` fast

    print(json.dumps(environment.describe(), indent=2))
    return 0


def _train(args: argparse.Namespace, overrides: Sequence[str] = ()) -> int:
    from jaxalign import train

    return train.run(args, overrides)


def _eval(args: argparse.Namespace) -> int:
    from jaxalign import config as config_lib
    from jaxalign import train

    try:
        results = train.evaluate_workdir(args.workdir, progress=args.progress)
    except (config_lib.ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxalign", description="Representation learning over the global batch."
    )
    parser.add_argument("--version", action="version", version=f"jaxalign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="print versions, devices, processes and git commit")
    env.set_defaults(run=_env)
    train = commands.add_parser(
        "train",
        help="train a config in a work directory (resumes there); --config.KEY=VALUE overrides",
    )
    add_train_arguments(train)
    train.set_defaults(run=_train, takes_overrides=True)
    evaluate = commands.add_parser("eval", help="re-run a run's evals from its newest checkpoint")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    evaluate.set_defaults(run=_eval)
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The trainer's flags (shared by ``jaxalign train`` and ``python -m jaxalign.train``);
    ``--config.KEY=VALUE`` overrides are the arguments left over."""
    parser.add_argument("--config", required=True, help="file.py[:preset], e.g. configs/clip.py")
    parser.add_argument("--workdir", required=True, help="the run's directory (resumes there)")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host: TPU pods, SLURM, k8s)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        return args.run(args, extra)
    if extra:
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
