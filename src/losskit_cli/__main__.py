"""`python -m losskit_cli`: the `losskit` command."""

import sys

from losskit_cli import main

sys.exit(main())
