"""`python -m dipnet` (and `torchrun -m dipnet`) runs the command line."""

import sys

from .cli import main

sys.exit(main())
