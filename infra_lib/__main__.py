"""``python -m infra_lib ...``: the command line (see :mod:`infra_lib.cli`)."""
import sys

from .cli import main

sys.exit(main())
