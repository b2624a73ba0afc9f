"""``python -m trustfid score|stats|inspect ...``: the library's commands, without the service."""

import sys

from .cli import main

sys.exit(main())
