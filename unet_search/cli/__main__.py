"""``python -m unet_search.cli``: the entry point a submitted Ray job runs."""

import sys

from unet_search.cli.app import main

sys.exit(main())
