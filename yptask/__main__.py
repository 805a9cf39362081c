"""`python -m yptask`: the same as the `yptask` command."""

import sys

from yptask.cli.main import main

sys.exit(main())
