"""``python -m organism build|sweep|evaluate|probe`` (see :mod:`organism.cli`)."""

import sys

from organism.cli import main

sys.exit(main())
