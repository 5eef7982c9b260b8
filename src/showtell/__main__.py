"""`python -m showtell` (and `torchrun -m showtell train ...`)."""

import sys

from .cli import main

sys.exit(main())
