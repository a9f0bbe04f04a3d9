"""Entry point: ``python -m decoder_api``."""

import sys

from decoder_api.cli import main

sys.exit(main())
