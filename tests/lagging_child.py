"""``python -m tests.lagging_child -m jaxalign train ...``: the trainer, with one process of a
multi-process run sleeping after it compiles its step (a machine where one process compiles
slower than the others). ``LAG_PROCESS``: that process's index; ``LAG_S``: the seconds.

``interpreter`` writes a script for ``launch/local.sh``'s ``PYTHON`` that runs it."""

from __future__ import annotations

import os
import sys
import time

from tests.trainer_child import cache_on_every_process, child_interpreter


def interpreter(directory, process: int, seconds: float) -> str:
    """Writes ``directory/python`` (process ``process`` lags ``seconds``); returns its path."""
    return child_interpreter(directory, "tests.lagging_child", LAG_PROCESS=process, LAG_S=seconds)


def main(argv: list[str]) -> int:
    if argv[:2] != ["-m", "jaxalign"]:
        raise SystemExit(f"usage: lagging_child.py -m jaxalign train ...; got {argv[:2]}")
    cache_on_every_process()
    import jax

    from jaxalign import cli, train

    compile_step = train.RunSetup.compile_step

    def lagging(self):
        compiled = compile_step(self)
        if jax.process_index() == int(os.environ["LAG_PROCESS"]):
            time.sleep(float(os.environ["LAG_S"]))
        return compiled

    train.RunSetup.compile_step = lagging
    return cli.main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
