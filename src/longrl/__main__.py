"""``python -m longrl ...`` (and ``torchrun ... -m longrl ...``): the ``longrl`` command."""

import sys

from longrl.cli import main

sys.exit(main())
