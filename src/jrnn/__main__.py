"""``python -m jrnn`` runs the ``jrnn`` command."""

import sys

from jrnn.cli import main

sys.exit(main())
