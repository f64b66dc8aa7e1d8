"""`python -m fleet_ops ...` from the repository root."""

import sys

from fleet_ops.cli import main

sys.exit(main())
