"""The device side: the OTA agent, its installers and its local API.

Runs on the target with the Python standard library only (plus the
``openssl`` command or the ``cryptography`` package for signature checks).
"""
