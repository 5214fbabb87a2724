"""The core: what the build host, the partner tools, the server and the device
all share. Formats (header, record, schemas), signing, packaging and
verification, the partner config, versions, errors and file helpers.

Imports only the standard library at import time and nothing of
``ota_build.partner``, ``ota_build.server``, ``ota_build.device`` or
``ota_build.cli`` (docs/architecture.md).
"""
