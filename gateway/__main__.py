"""``python -m gateway`` is ``conduit``."""

import sys

from gateway.cli import main

sys.exit(main())
