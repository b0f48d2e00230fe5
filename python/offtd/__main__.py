"""`python -m offtd` is the `offtd` command."""

import sys

from .cli import main

sys.exit(main())
