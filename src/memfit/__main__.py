"""``python -m memfit``: the same as the ``memfit`` command."""

import sys

from .cli import main

sys.exit(main())
