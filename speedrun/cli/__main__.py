"""`python -m speedrun.cli ARGS`: the `speedrun` command without its entry-point script."""

import sys

from speedrun.cli import main

sys.exit(main())
