"""The ``command`` back-end: an external signer (an HSM wrapper, PKCS#11, a signing service).

It only signs: ota_build is given the matching public key so it can name it in
the header, and verification uses the ``cryptography`` or ``openssl`` back-end.
See docs/signing.md.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Sequence, Union

from ota_build.core.errors import KeyError_, SigningError
from ota_build.core.signing.base import Signer, run
from ota_build.core.signing.keys import load_public_key


class CommandSigner(Signer):
    """Runs an external signer.

    ``command`` is a shell-style string or an argument list; it runs without a
    shell. The message goes to the command's stdin, or, when an argument
    contains ``{in}``, to a temporary file whose path replaces ``{in}`` (some
    tools, such as ``openssl pkeyutl -rawin`` for Ed25519, cannot sign from a
    pipe). The signature is read from stdout, or from the file that replaces
    ``{out}`` when an argument contains it. ``public_key_path`` is the PEM
    public key of the signing key.
    """

    def __init__(self, command: Union[str, Sequence[str]], public_key_path: str):
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.command:
            raise KeyError_("signing command is empty")
        self.public_key = load_public_key(public_key_path)

    def sign(self, message: bytes) -> bytes:
        """Run the command on ``message``; SigningError when it fails or prints nothing."""
        with tempfile.TemporaryDirectory(prefix="ota-extsign-") as tmp:
            msg, sig = os.path.join(tmp, "msg"), os.path.join(tmp, "sig")
            uses_in = any("{in}" in arg for arg in self.command)
            uses_out = any("{out}" in arg for arg in self.command)
            if uses_in:
                Path(msg).write_bytes(message)
            cmd = [arg.replace("{in}", msg).replace("{out}", sig) for arg in self.command]
            stdout = run(cmd, "external signer", stdin=None if uses_in else message)
            signature = Path(sig).read_bytes() if uses_out and os.path.exists(sig) else stdout
        if not signature:
            raise SigningError("external signer: produced no signature")
        return signature
