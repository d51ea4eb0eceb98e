"""``python -m snncc`` runs the command line."""

import sys

from snncc.cli import main

sys.exit(main())
