"""`python -m rdscsi`: the same command line as `rdscsi`."""

import sys

from .cli import main

sys.exit(main())
