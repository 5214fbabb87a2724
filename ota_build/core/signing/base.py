"""The interface every signing back-end implements: ``Signer`` and ``Backend``.

A ``Signer`` signs header bytes with one key. A ``Backend`` is what a
``--backend`` name stands for: it makes signers from key files, verifies
signatures and generates key pairs. ``run`` is the one way back-ends run a
command (openssl, an external signer): one-line errors, no shell, a timeout.
"""

from __future__ import annotations

import abc
import os
import subprocess
from typing import Dict, Optional, Sequence, Tuple

from ota_build.core.errors import SigningError
from ota_build.core.header import SigAlg
from ota_build.core.signing.keys import PublicKey


class Signer(abc.ABC):
    """Signs header bytes. Subclasses must set ``public_key``."""

    public_key: PublicKey

    @property
    def algorithm(self) -> SigAlg:
        """The header's sig_alg for this signer."""
        return self.public_key.algorithm

    @property
    def key_id(self) -> bytes:
        """The header's key_id for this signer."""
        return self.public_key.key_id

    @property
    def max_signature_length(self) -> int:
        """Bytes to reserve for the signature."""
        return self.public_key.max_signature_length

    @abc.abstractmethod
    def sign(self, message: bytes) -> bytes:
        """Return the signature of ``message``."""


class Backend(abc.ABC):
    """A signature back-end: signers from key files, verification, key generation."""

    name: str

    @abc.abstractmethod
    def signer(self, key_path: str) -> Signer:
        """A signer for the PEM private key at ``key_path`` (password from OTA_KEY_PASSWORD)."""

    @abc.abstractmethod
    def verify(self, key: PublicKey, alg: SigAlg, message: bytes, signature: bytes) -> None:
        """Raise BadSignatureError unless ``signature`` is valid for ``message`` (``alg`` matches ``key``)."""

    @abc.abstractmethod
    def generate(self, algorithm: str, rsa_bits: int) -> Tuple[bytes, bytes]:
        """A new key pair of ``algorithm`` (one of KEYGEN_ALGORITHMS): (private PKCS#8 PEM, public PEM)."""


def run(cmd: Sequence[str], what: str, stdin: Optional[bytes] = None, env: Optional[Dict[str, str]] = None) -> bytes:
    """Run ``cmd`` (no shell) and return its stdout; SigningError with its first stderr line when it fails."""
    try:
        out = subprocess.run(list(cmd), input=stdin, capture_output=True, env=env, check=False, timeout=300)
    except FileNotFoundError:
        raise SigningError(f"{what}: command not found: {cmd[0]}") from None
    except subprocess.TimeoutExpired:
        raise SigningError(f"{what}: {cmd[0]} timed out") from None
    if out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SigningError(f"{what}: {os.path.basename(cmd[0])} exited {out.returncode}: {err[0] if err else 'no message'}")
    return out.stdout
