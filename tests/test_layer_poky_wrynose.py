"""meta-ota on a full oe-core wrynose tree: parse, -e, -g, yocto-check-layer (tests/layer_poky.py).

One file per release so that pytest-xdist (--dist loadfile) checks the releases on different workers.
"""

import pytest

from .layer_poky import PokyChecks

pytestmark = [pytest.mark.poky]


class TestWrynose(PokyChecks):
    release = "wrynose"
