"""The command lines of the build host and the service: ``ota-build``
(build.py, service.py), the seed's ``partner-ota-hub-uploader`` and
``partner-ota-hub-deploy`` (compat.py) and the demo. The top of the import
graph: may import every other part; nothing imports it.
"""
