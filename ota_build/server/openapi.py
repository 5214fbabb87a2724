"""Print the service's OpenAPI description (committed as docs/openapi.json).

``python -m ota_build.server.openapi > docs/openapi.json``
"""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any, Dict


def openapi_document() -> Dict[str, Any]:
    """The OpenAPI document of the application (built over a throw-away data directory)."""
    from ota_build.server.app import Settings, create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=tmp))
        doc = app.openapi()
        app.state.db.dispose()
    return doc


def main() -> int:
    """Write the document to stdout."""
    sys.stdout.write(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
