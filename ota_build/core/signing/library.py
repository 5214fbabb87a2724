"""The ``cryptography`` back-end: the Python library (default on hosts and in tests).

``cryptography`` is imported inside the functions only, so this module loads
where the library is missing (BitBake's python3-native, the device).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

from ota_build.core.errors import BadSignatureError, KeyError_
from ota_build.core.header import SigAlg
from ota_build.core.signing.base import Backend, Signer
from ota_build.core.signing.keys import PASSWORD_ENV, PSS_SALT_LENGTH, PublicKey, public_key_from_pem, read_private_key_file


def available() -> bool:
    """Whether the ``cryptography`` library can be imported."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


class CryptographySigner(Signer):
    """Signs with the ``cryptography`` library from a PEM private key."""

    def __init__(self, key_path: str, password: Optional[bytes] = None):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        data = read_private_key_file(key_path)
        if password is None and os.environ.get(PASSWORD_ENV):
            password = os.environ[PASSWORD_ENV].encode()
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except TypeError as exc:
            raise KeyError_(f"{key_path}: {exc} (set {PASSWORD_ENV} for an encrypted key)") from None
        except ValueError:
            raise KeyError_(f"{key_path}: not a PEM private key, or wrong password") from None
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise KeyError_(f"{key_path}: unsupported key type (use Ed25519, ECDSA P-256 or RSA)")
        if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
            raise KeyError_(f"{key_path}: only the P-256 curve is supported for ECDSA")
        self._key = key
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key = public_key_from_pem(pem, key_path)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signs ``message``; ECDSA P-256 and RSA-PSS sign its SHA-256."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(message, ec.ECDSA(hashes.SHA256()))
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(message, padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT_LENGTH), hashes.SHA256())


class CryptographyBackend(Backend):
    """``--backend cryptography``."""

    name = "cryptography"

    def signer(self, key_path: str) -> Signer:
        """A CryptographySigner for ``key_path``."""
        return CryptographySigner(key_path)

    def verify(self, key: PublicKey, alg: SigAlg, message: bytes, signature: bytes) -> None:
        """Raise BadSignatureError unless ``signature`` verifies."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

        pub = serialization.load_der_public_key(key.der)
        try:
            if isinstance(pub, ed25519.Ed25519PublicKey):
                pub.verify(signature, message)
            elif isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            elif isinstance(pub, rsa.RSAPublicKey):
                pub.verify(signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT_LENGTH), hashes.SHA256())
            else:
                raise BadSignatureError(f"unsupported public key type for {alg.label}")
        except (InvalidSignature, ValueError):
            raise BadSignatureError("signature does not verify") from None

    def generate(self, algorithm: str, rsa_bits: int) -> Tuple[bytes, bytes]:
        """A new key pair as (PKCS#8 private PEM, public PEM)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        key: Any
        if algorithm == "ed25519":
            key = ed25519.Ed25519PrivateKey.generate()
        elif algorithm == "ecdsa-p256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        return private_pem, public_pem
