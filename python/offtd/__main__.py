"""`python -m offtd` is the `offtd` command."""

import sys

try:
    from .cli import command
except KeyboardInterrupt:  # Ctrl-C while the command itself is being imported
    sys.stderr.write("offtd: error: interrupted before a report was written\n")
    sys.exit(130)

sys.exit(command())
