"""``python -m ota_build.cli``: the ``ota-build`` command."""

import sys

from ota_build.cli.build import main

sys.exit(main())
