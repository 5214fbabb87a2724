"""Signing and verification behind one interface, with three back-ends.

* ``cryptography``: the Python library (default on hosts and in tests).
* ``openssl``: the ``openssl`` command. This is what the BitBake layer uses,
  because ``openssl-native`` is in every build while oe-core's native
  ``cryptography`` recipe pulls in rust-native.
* ``command``: an external signer (an HSM wrapper, a signing service, or
  ``openssl pkeyutl`` with a PKCS#11 provider). It gets the message to sign on
  stdin and prints the raw signature on stdout; ota_build is given the matching
  public key so it can name it in the header. See docs/signing.md.

Nothing here implements cryptography: hashing is ``hashlib`` (OpenSSL), and
every signature operation is done by ``cryptography`` or ``openssl``.
The signed message is the header bytes before the signature; Ed25519 signs
it directly, ECDSA P-256 and RSA-PSS sign its SHA-256 (RSA-PSS with MGF1-SHA256
and a 32-byte salt). ECDSA signatures are DER-encoded as both back-ends emit them.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import logging
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ota_build.core.errors import BadSignatureError, KeyError_, SigningError, UnknownKeyError
from ota_build.core.files import atomic_write_bytes
from ota_build.core.header import SigAlg

log = logging.getLogger(__name__)

PSS_SALT_LENGTH = 32
_OID_ED25519 = bytes.fromhex("06032b6570")
_OID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")
_OID_P256 = bytes.fromhex("06082a8648ce3d030107")
_OID_RSA = bytes.fromhex("06092a864886f70d010101")
_OID_RSA_PSS = bytes.fromhex("06092a864886f70d01010a")
_PEM_RE = re.compile(rb"-----BEGIN PUBLIC KEY-----\s*(.+?)\s*-----END PUBLIC KEY-----", re.S)
PASSWORD_ENV = "OTA_KEY_PASSWORD"


def resolve_backend(backend: str) -> str:
    """``auto`` becomes ``cryptography`` when the library is importable, else ``openssl``."""
    if backend != "auto":
        return backend
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return "openssl"
    return "cryptography"


# --------------------------------------------------------------------------- public keys

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

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key_id: bytes) -> PublicKey:
        """The key with ``key_id``; UnknownKeyError if it is not trusted."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyError(f"signed by key {key_id.hex()[:16]}…, which is not among the {len(self)} trusted key(s)") from None


# --------------------------------------------------------------------------- signers

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


def _read_private(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyError_(f"{path}: signing key file not found") from None
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read signing key: {exc.strerror}") from None


class CryptographySigner(Signer):
    """Signs with the ``cryptography`` library from a PEM private key."""

    def __init__(self, key_path: str, password: Optional[bytes] = None):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        data = _read_private(key_path)
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
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(message, ec.ECDSA(hashes.SHA256()))
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(message, padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT_LENGTH), hashes.SHA256())


def _run(cmd: Sequence[str], what: str, stdin: Optional[bytes] = None, env: Optional[Dict[str, str]] = None) -> bytes:
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


class OpenSSLSigner(Signer):
    """Signs with the ``openssl`` command (the BitBake build's back-end).

    A key password is read by openssl itself from the environment variable
    OTA_KEY_PASSWORD (``-passin env:``), never from the command line.
    """

    def __init__(self, key_path: str, openssl: str = "openssl"):
        if not os.path.isfile(key_path):
            raise KeyError_(f"{key_path}: signing key file not found")
        self.key_path = key_path
        self.openssl = openssl
        pem = _run([openssl, "pkey", "-in", key_path, "-pubout", *self._passin()], f"{key_path}: reading the key")
        self.public_key = public_key_from_pem(pem, key_path)

    def _passin(self) -> List[str]:
        return ["-passin", f"env:{PASSWORD_ENV}"] if os.environ.get(PASSWORD_ENV) else []

    def sign(self, message: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="ota-sign-") as tmp:
            msg = os.path.join(tmp, "msg")
            sig = os.path.join(tmp, "sig")
            Path(msg).write_bytes(message)
            alg = self.algorithm
            if alg is SigAlg.ED25519:
                cmd = [self.openssl, "pkeyutl", "-sign", "-rawin", "-inkey", self.key_path, *self._passin(),
                       "-in", msg, "-out", sig]
            else:
                cmd = [self.openssl, "dgst", "-sha256", "-sign", self.key_path, *self._passin(), "-out", sig]
                if alg is SigAlg.RSA_PSS_SHA256:
                    cmd += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", f"rsa_pss_saltlen:{PSS_SALT_LENGTH}"]
                cmd.append(msg)
            _run(cmd, f"{self.key_path}: signing")
            return Path(sig).read_bytes()


class CommandSigner(Signer):
    """Runs an external signer (an HSM wrapper, PKCS#11, a signing service).

    ``command`` is a shell-style string or an argument list; it runs without a
    shell. The message goes to the command's stdin, or, when an argument
    contains ``{in}``, to a temporary file whose path replaces ``{in}`` (some
    tools, such as ``openssl pkeyutl -rawin`` for Ed25519, cannot sign from a
    pipe). The signature is read from stdout, or from the file that replaces
    ``{out}`` when an argument contains it. ``public_key_path`` is the PEM
    public key of the signing key.
    """

    def __init__(self, command: "str | Sequence[str]", public_key_path: str):
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.command:
            raise KeyError_("signing command is empty")
        self.public_key = load_public_key(public_key_path)

    def sign(self, message: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="ota-extsign-") as tmp:
            msg, sig = os.path.join(tmp, "msg"), os.path.join(tmp, "sig")
            uses_in = any("{in}" in arg for arg in self.command)
            uses_out = any("{out}" in arg for arg in self.command)
            if uses_in:
                Path(msg).write_bytes(message)
            cmd = [arg.replace("{in}", msg).replace("{out}", sig) for arg in self.command]
            stdout = _run(cmd, "external signer", stdin=None if uses_in else message)
            signature = Path(sig).read_bytes() if uses_out and os.path.exists(sig) else stdout
        if not signature:
            raise SigningError("external signer: produced no signature")
        return signature


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
    backend = resolve_backend(backend)
    if backend == "cryptography":
        return CryptographySigner(key)
    if backend == "openssl":
        return OpenSSLSigner(key, openssl=openssl)
    raise KeyError_(f"unknown signing backend {backend!r} (auto, cryptography, openssl, command)")


# --------------------------------------------------------------------------- verification

def verify_signature(key: PublicKey, alg: SigAlg, message: bytes, signature: bytes,
                     backend: str = "auto", openssl: str = "openssl") -> None:
    """Raise BadSignatureError unless ``signature`` is valid for ``message``."""
    if alg is not key.algorithm:
        raise BadSignatureError(f"header says {alg.label} but the trusted key is {key.algorithm.label}")
    backend = resolve_backend(backend)
    if backend == "cryptography":
        _verify_cryptography(key, alg, message, signature)
    elif backend == "openssl":
        _verify_openssl(key, alg, message, signature, openssl)
    else:
        raise ValueError(f"unknown verify backend {backend!r}")


def _verify_cryptography(key: PublicKey, alg: SigAlg, message: bytes, signature: bytes) -> None:
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


def _verify_openssl(key: PublicKey, alg: SigAlg, message: bytes, signature: bytes, openssl: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ota-verify-") as tmp:
        paths = {name: os.path.join(tmp, name) for name in ("pub", "msg", "sig")}
        Path(paths["pub"]).write_bytes(key.pem)
        Path(paths["msg"]).write_bytes(message)
        Path(paths["sig"]).write_bytes(signature)
        if alg is SigAlg.ED25519:
            cmd = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", paths["pub"], "-rawin",
                   "-in", paths["msg"], "-sigfile", paths["sig"]]
        else:
            cmd = [openssl, "dgst", "-sha256", "-verify", paths["pub"], "-signature", paths["sig"]]
            if alg is SigAlg.RSA_PSS_SHA256:
                cmd += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", f"rsa_pss_saltlen:{PSS_SALT_LENGTH}"]
            cmd.append(paths["msg"])
        try:
            out = subprocess.run(cmd, capture_output=True, check=False, timeout=300)
        except FileNotFoundError:
            raise SigningError(f"verify: command not found: {openssl}") from None
        if out.returncode != 0:
            raise BadSignatureError("signature does not verify")


# --------------------------------------------------------------------------- key generation

KEYGEN_ALGORITHMS = ("ed25519", "ecdsa-p256", "rsa-pss")


def generate_key(algorithm: str, private_path: str, public_path: str, backend: str = "auto",
                 rsa_bits: int = 3072, openssl: str = "openssl", overwrite: bool = False) -> PublicKey:
    """Create a key pair as PEM files (private 0600, written atomically)."""
    if algorithm not in KEYGEN_ALGORITHMS:
        raise KeyError_(f"unknown key algorithm {algorithm!r} ({', '.join(KEYGEN_ALGORITHMS)})")
    for path in (private_path, public_path):
        if os.path.exists(path) and not overwrite:
            raise KeyError_(f"{path}: already exists (refusing to overwrite a key; use --force)")
    backend = resolve_backend(backend)
    if backend == "cryptography":
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
    elif backend == "openssl":
        if algorithm == "ed25519":
            gen = ["-algorithm", "ED25519"]
        elif algorithm == "ecdsa-p256":
            gen = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
        else:
            gen = ["-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{rsa_bits}"]
        old = os.umask(0o077)
        try:
            private_pem = _run([openssl, "genpkey", *gen], "keygen")
        finally:
            os.umask(old)
        public_pem = _run([openssl, "pkey", "-pubout"], "keygen", stdin=private_pem)
    else:
        raise KeyError_(f"unknown keygen backend {backend!r}")
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem, mode=0o644)
    return public_key_from_pem(public_pem, public_path)
