"""The OTA service: the Afero-compatible cloud API, the seed-001 package API,
the device API and a web page, on SQLAlchemy (SQLite by default) and a data
directory. Start it with ``ota-build serve``; see docs/server.md.

Needs the ``server`` extra: ``pip install 'ota_build[server]'``.
"""
