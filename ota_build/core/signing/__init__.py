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
from typing import Optional, Tuple

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
    "verify_signature", "sign_message", "ecdsa_is_low_s", "ecdsa_low_s", "P256_ORDER",
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
    """Raise BadSignatureError unless ``signature`` is valid for ``message``; an ECDSA signature must be
    low-S (``ecdsa_is_low_s``), whatever the back-end."""
    if alg is not key.algorithm:
        raise BadSignatureError(f"header says {alg.label} but the trusted key is {key.algorithm.label}")
    if alg is SigAlg.ECDSA_P256_SHA256 and not ecdsa_is_low_s(signature):
        raise BadSignatureError("ECDSA signature with a high S value (the malleable twin of a valid one; "
                                "ota-build signs low-S: re-sign the image)")
    get_backend(backend, openssl).verify(key, alg, message, signature)


def sign_message(signer: Signer, message: bytes) -> bytes:
    """``signer.sign(message)``, an ECDSA signature brought to its low-S form (``ecdsa_low_s``)."""
    signature = signer.sign(message)
    if signer.algorithm is SigAlg.ECDSA_P256_SHA256:
        signature = ecdsa_low_s(signature)
    return signature


#: the order n of the P-256 group: (r, s) and (r, n - s) are both valid ECDSA signatures
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _dss_decode(signature: bytes) -> Tuple[int, int]:
    """(r, s) of a DER ECDSA signature; BadSignatureError when it is not one (strict DER)."""
    try:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    except ImportError:  # the device and BitBake's python3-native: the openssl back-end
        return _der_decode(signature)
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        raise BadSignatureError("ECDSA signature is not DER-encoded") from None
    if _dss_encode(r, s) != signature:
        raise BadSignatureError("ECDSA signature is not in canonical DER")
    return r, s


def _dss_encode(r: int, s: int) -> bytes:
    try:
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    except ImportError:
        return _der_encode(r, s)
    return encode_dss_signature(r, s)


def _der_int(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading 0 byte keeps it positive
    return b"\x02" + bytes([len(body)]) + body


def _der_encode(r: int, s: int) -> bytes:
    """SEQUENCE { INTEGER r, INTEGER s } (DER) without the library: P-256 values fit short lengths."""
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def _der_decode(signature: bytes) -> Tuple[int, int]:
    """The inverse of ``_der_encode``: a signature is accepted only in that one canonical form."""
    bad = BadSignatureError("ECDSA signature is not in canonical DER")
    if len(signature) < 8 or signature[0] != 0x30 or signature[1] != len(signature) - 2:
        raise bad
    values, pos = [], 2
    for _ in range(2):
        if pos + 2 > len(signature) or signature[pos] != 0x02:
            raise bad
        length = signature[pos + 1]
        values.append(int.from_bytes(signature[pos + 2:pos + 2 + length], "big"))
        pos += 2 + length
    r, s = values
    if pos != len(signature) or _der_encode(r, s) != signature:
        raise bad
    return r, s


def ecdsa_is_low_s(signature: bytes) -> bool:
    """Whether a DER ECDSA P-256 signature has s <= n/2 (the one form accepted); BadSignatureError if not DER."""
    _r, s = _dss_decode(signature)
    return s <= P256_ORDER // 2


def ecdsa_low_s(signature: bytes) -> bytes:
    """A DER ECDSA P-256 signature with s replaced by n - s when s > n/2 (the same signature's low-S form)."""
    r, s = _dss_decode(signature)
    return signature if s <= P256_ORDER // 2 else _dss_encode(r, P256_ORDER - s)


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
