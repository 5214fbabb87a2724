"""Public keys, as the header and every back-end see them: PEM, DER, algorithm, key id.

Parsing is limited to finding the PEM block and the SubjectPublicKeyInfo's
algorithm OIDs; no cryptography is done here (the key id is ``hashlib``'s SHA-256).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

from ota_build.core.errors import KeyError_, UnknownKeyError
from ota_build.core.header import SigAlg

#: RSA-PSS salt length (bytes) used by every back-end
PSS_SALT_LENGTH = 32
#: the environment variable holding an encrypted private key's password
PASSWORD_ENV = "OTA_KEY_PASSWORD"

_OID_ED25519 = bytes.fromhex("06032b6570")
_OID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")
_OID_P256 = bytes.fromhex("06082a8648ce3d030107")
_OID_RSA = bytes.fromhex("06092a864886f70d010101")
_OID_RSA_PSS = bytes.fromhex("06092a864886f70d01010a")
_PEM_RE = re.compile(rb"-----BEGIN PUBLIC KEY-----\s*(.+?)\s*-----END PUBLIC KEY-----", re.S)


@dataclass(frozen=True)
class PublicKey:
    """A public key as PEM plus what the header needs from it."""

    pem: bytes
    der: bytes
    algorithm: SigAlg
    source: str = ""

    @property
    def key_id(self) -> bytes:
        """SHA-256 of the DER SubjectPublicKeyInfo."""
        return hashlib.sha256(self.der).digest()

    @property
    def max_signature_length(self) -> int:
        """An upper bound of this key's signature size."""
        if self.algorithm is SigAlg.ED25519:
            return 64
        if self.algorithm is SigAlg.ECDSA_P256_SHA256:
            return 72
        return len(self.der)  # the SPKI holds the modulus, so it bounds the signature


def algorithm_of_spki(der: bytes, source: str = "public key") -> SigAlg:
    """Identify the signature algorithm of a DER SubjectPublicKeyInfo by its OIDs."""
    head = der[:32]
    if _OID_ED25519 in head:
        return SigAlg.ED25519
    if _OID_EC_PUBLIC_KEY in head:
        if _OID_P256 in der[:40]:
            return SigAlg.ECDSA_P256_SHA256
        raise KeyError_(f"{source}: only the P-256 curve is supported for ECDSA")
    if _OID_RSA in head or _OID_RSA_PSS in head:
        return SigAlg.RSA_PSS_SHA256
    raise KeyError_(f"{source}: unsupported key type (use Ed25519, ECDSA P-256 or RSA)")


def public_key_from_pem(pem: bytes, source: str = "public key") -> PublicKey:
    """Parse a ``-----BEGIN PUBLIC KEY-----`` PEM block."""
    match = _PEM_RE.search(pem)
    if not match:
        raise KeyError_(f"{source}: not a PEM public key (expected -----BEGIN PUBLIC KEY-----)")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except ValueError:
        raise KeyError_(f"{source}: PEM public key is not valid base64") from None
    block = match.group(0) + b"\n"
    return PublicKey(pem=block, der=der, algorithm=algorithm_of_spki(der, source), source=source)


def load_public_key(path: str) -> PublicKey:
    """Read a PEM public key file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyError_(f"{path}: public key file not found") from None
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read public key: {exc.strerror}") from None
    return public_key_from_pem(data, path)


def read_private_key_file(path: str) -> bytes:
    """The bytes of a private key file; KeyError_ naming it when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyError_(f"{path}: signing key file not found") from None
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read signing key: {exc.strerror}") from None


class Keyring:
    """Trusted public keys, looked up by key id."""

    def __init__(self, keys: Iterable[PublicKey] = ()):
        self._keys: Dict[bytes, PublicKey] = {}
        for key in keys:
            self._keys[key.key_id] = key

    @classmethod
    def from_files(cls, paths: Sequence[str]) -> "Keyring":
        """Load every PEM file in ``paths`` (a directory adds all its ``*.pem``)."""
        keys: List[PublicKey] = []
        for path in paths:
            if os.path.isdir(path):
                for pem in sorted(Path(path).glob("*.pem")):
                    keys.append(load_public_key(str(pem)))
            else:
                keys.append(load_public_key(path))
        return cls(keys)

    @classmethod
    def trusted(cls, paths: Sequence[str], option: str = "--key") -> "Keyring":
        """``from_files`` for a command's trusted keys: a KeyError_ naming ``option`` when none was found."""
        keyring = cls.from_files(paths)
        if not len(keyring):
            raise KeyError_(f"no trusted public key found in {option}")
        return keyring

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> List[PublicKey]:
        """Every trusted key (for formats that do not name the key, e.g. a SUIT manifest without a kid)."""
        return list(self._keys.values())

    def get(self, key_id: bytes) -> PublicKey:
        """The key with ``key_id``; UnknownKeyError if it is not trusted."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyError(f"signed by key {key_id.hex()[:16]}…, which is not among the {len(self)} trusted key(s)") from None
