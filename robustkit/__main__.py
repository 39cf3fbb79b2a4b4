"""``python -m robustkit`` is the ``robustkit`` command."""

import sys

from .cli import main

sys.exit(main())
