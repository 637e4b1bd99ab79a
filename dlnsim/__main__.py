"""`python -m dlnsim ...` is the `dlnsim` command (see dlnsim.cli)."""
import sys

from .cli import main

sys.exit(main())
