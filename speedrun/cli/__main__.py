"""`python -m speedrun.cli ...`: the `speedrun` command without its console-script shim."""

import sys

from speedrun.cli import main

sys.exit(main())
