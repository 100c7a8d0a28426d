"""The ``jaxalign`` command: subcommands over the library's entry points.

jaxalign env          # versions, devices, processes and commit, as JSON (env.json's content)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxalign", description="Representation learning over the global batch."
    )
    parser.add_argument("--version", action="version", version=f"jaxalign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="print versions, devices, processes and git commit")
    env.set_defaults(run=_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
