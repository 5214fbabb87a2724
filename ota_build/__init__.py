"""ota_build: signed, versioned OTA releases from Yocto builds.

The modules import only the Python standard library at import time so that the
BitBake layer can run them from ``python3-native`` without ``cryptography``,
``jsonschema`` or ``requests`` (each of which pulls rust-native into a build).
Optional dependencies are imported lazily where they are used.
"""

__version__ = "0.1.0"
