"""`python -m pnyx.cli ...`: the same as `pnyx ...`."""

import sys

from pnyx.cli import main

sys.exit(main())
