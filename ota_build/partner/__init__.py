"""The partner side: the HTTP client of the OTA service, the upload / list /
deploy flows, and seed 001's ``pack``. Used by the command line and the
layer's upload task; never installed on a device. Imports only ``core``.
"""
