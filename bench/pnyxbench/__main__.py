"""`python -m pnyxbench ...` (with bench/ on the path): the same as `pnyx bench ...`."""

import sys

from pnyxbench.main import main

sys.exit(main())
