"""`python -m chatdock.server.cli`: the chatdock command, with its exit status."""

import sys

from .main import main

sys.exit(main())
