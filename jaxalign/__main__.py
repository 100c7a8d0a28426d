"""``python -m jaxalign``: the ``jaxalign`` command (``jaxalign.cli``)."""

from jaxalign.cli import run

run()
