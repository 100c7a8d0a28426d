"""``python -m jaxalign``: the ``jaxalign`` command (``jaxalign.cli``)."""

import sys

from jaxalign.cli import main

sys.exit(main())
