"""``python -m lazymem``: the command line (see :mod:`lazymem.cli`)."""

import sys

from .cli import main

sys.exit(main())
