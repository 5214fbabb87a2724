"""Signing and verification behind one interface, with three back-ends.

* ``cryptography`` (``signing/library.py``): the Python library (default on hosts and in tests).
* ``openssl`` (``signing/openssl.py``): the ``openssl`` command. This is what the
  BitBake layer uses, because ``openssl-native`` is in every build while
  oe-core's native ``cryptography`` recipe pulls in rust-native.
* ``command`` (``signing/command.py``): an external signer (an HSM wrapper, a
  signing service, or ``openssl pkeyutl`` with a PKCS#11 provider). It gets the
  message to sign on stdin and prints the raw signature on stdout; ota_build is
  given the matching public key so it can name it in the header. See docs/signing.md.

The ``--backend`` name (``auto``, ``cryptography``, ``openssl``) is resolved in
one place, ``get_backend()``; ``make_signer``, ``verify_signature`` and
``generate_key`` all go through it.

Nothing here implements cryptography: hashing is ``hashlib`` (OpenSSL), and
every signature operation is done by ``cryptography`` or ``openssl``.
The signed message is the header bytes before the signature; Ed25519 signs
it directly, ECDSA P-256 and RSA-PSS sign its SHA-256 (RSA-PSS with MGF1-SHA256
and a 32-byte salt). ECDSA signatures are DER-encoded as both back-ends emit them.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from ota_build.core.errors import BadSignatureError, KeyError_
from ota_build.core.files import atomic_write_bytes
from ota_build.core.header import SigAlg
from ota_build.core.signing import library
from ota_build.core.signing.base import Backend, Signer
from ota_build.core.signing.command import CommandSigner
from ota_build.core.signing.keys import (PASSWORD_ENV, PSS_SALT_LENGTH, Keyring, PublicKey, algorithm_of_spki,
                                         load_public_key, public_key_from_pem)
from ota_build.core.signing.library import CryptographyBackend, CryptographySigner
from ota_build.core.signing.openssl import OpenSSLBackend, OpenSSLSigner

__all__ = [
    "BACKENDS", "KEYGEN_ALGORITHMS", "PASSWORD_ENV", "PSS_SALT_LENGTH", "Backend", "CommandSigner", "CryptographyBackend",
    "CryptographySigner", "Keyring", "OpenSSLBackend", "OpenSSLSigner", "PublicKey", "Signer", "algorithm_of_spki",
    "generate_key", "get_backend", "load_public_key", "make_signer", "public_key_from_pem", "resolve_backend",
    "verify_signature",
]

log = logging.getLogger(__name__)

#: the ``--backend`` names: ``auto`` picks cryptography when importable, else openssl
BACKENDS = ("auto", "cryptography", "openssl")
KEYGEN_ALGORITHMS = ("ed25519", "ecdsa-p256", "rsa-pss")


def resolve_backend(name: str) -> str:
    """``auto`` becomes ``cryptography`` when the library is importable, else ``openssl``."""
    if name != "auto":
        return name
    return "cryptography" if library.available() else "openssl"


def get_backend(name: str = "auto", openssl: str = "openssl") -> Backend:
    """The back-end called ``name`` (see BACKENDS); ``openssl`` is the command the openssl back-end runs."""
    resolved = resolve_backend(name)
    if resolved == "cryptography":
        return CryptographyBackend()
    if resolved == "openssl":
        return OpenSSLBackend(openssl)
    raise KeyError_(f"unknown signing backend {name!r} (auto, cryptography, openssl, command)")


def make_signer(key: Optional[str] = None, backend: str = "auto", command: Optional[str] = None,
                public_key: Optional[str] = None, openssl: str = "openssl") -> Signer:
    """Build a signer from CLI-style options.

    ``backend``: ``auto`` (cryptography when importable, else openssl),
    ``cryptography``, ``openssl`` or ``command`` (needs ``command`` and ``public_key``).
    """
    if backend == "command" or command:
        if not command or not public_key:
            raise KeyError_("an external signer needs both --sign-command and --public-key")
        return CommandSigner(command, public_key)
    if not key:
        raise KeyError_("no signing key given (--key)")
    return get_backend(backend, openssl).signer(key)


def verify_signature(key: PublicKey, alg: SigAlg, message: bytes, signature: bytes,
                     backend: str = "auto", openssl: str = "openssl") -> None:
    """Raise BadSignatureError unless ``signature`` is valid for ``message``."""
    if alg is not key.algorithm:
        raise BadSignatureError(f"header says {alg.label} but the trusted key is {key.algorithm.label}")
    get_backend(backend, openssl).verify(key, alg, message, signature)


def generate_key(algorithm: str, private_path: str, public_path: str, backend: str = "auto",
                 rsa_bits: int = 3072, openssl: str = "openssl", overwrite: bool = False) -> PublicKey:
    """Create a key pair as PEM files (private 0600, written atomically)."""
    if algorithm not in KEYGEN_ALGORITHMS:
        raise KeyError_(f"unknown key algorithm {algorithm!r} ({', '.join(KEYGEN_ALGORITHMS)})")
    for path in (private_path, public_path):
        if os.path.exists(path) and not overwrite:
            raise KeyError_(f"{path}: already exists (refusing to overwrite a key; use --force)")
    private_pem, public_pem = get_backend(backend, openssl).generate(algorithm, rsa_bits)
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem, mode=0o644)
    return public_key_from_pem(public_pem, public_path)
