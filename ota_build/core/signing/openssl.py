"""The ``openssl`` back-end: the ``openssl`` command.

This is what the BitBake layer uses, because ``openssl-native`` is in every
build while oe-core's native ``cryptography`` recipe pulls in rust-native; the
device verifies with it too. A key password is read by openssl itself from the
environment variable OTA_KEY_PASSWORD (``-passin env:``), never from the
command line.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import List, Tuple

from ota_build.core.errors import BadSignatureError, KeyError_, SigningError
from ota_build.core.header import SigAlg
from ota_build.core.signing.base import Backend, Signer, run
from ota_build.core.signing.keys import PASSWORD_ENV, PSS_SALT_LENGTH, PublicKey, public_key_from_pem

_PSS_OPTS = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", f"rsa_pss_saltlen:{PSS_SALT_LENGTH}"]


def _passin() -> List[str]:
    return ["-passin", f"env:{PASSWORD_ENV}"] if os.environ.get(PASSWORD_ENV) else []


class OpenSSLSigner(Signer):
    """Signs with the ``openssl`` command (the BitBake build's back-end)."""

    def __init__(self, key_path: str, openssl: str = "openssl"):
        if not os.path.isfile(key_path):
            raise KeyError_(f"{key_path}: signing key file not found")
        self.key_path = key_path
        self.openssl = openssl
        pem = run([openssl, "pkey", "-in", key_path, "-pubout", *_passin()], f"{key_path}: reading the key")
        self.public_key = public_key_from_pem(pem, key_path)

    def sign(self, message: bytes) -> bytes:
        """Sign through a temporary file (``pkeyutl -rawin`` cannot read Ed25519 input from a pipe)."""
        with tempfile.TemporaryDirectory(prefix="ota-sign-") as tmp:
            msg = os.path.join(tmp, "msg")
            sig = os.path.join(tmp, "sig")
            Path(msg).write_bytes(message)
            if self.algorithm is SigAlg.ED25519:
                cmd = [self.openssl, "pkeyutl", "-sign", "-rawin", "-inkey", self.key_path, *_passin(),
                       "-in", msg, "-out", sig]
            else:
                cmd = [self.openssl, "dgst", "-sha256", "-sign", self.key_path, *_passin(), "-out", sig]
                if self.algorithm is SigAlg.RSA_PSS_SHA256:
                    cmd += _PSS_OPTS
                cmd.append(msg)
            run(cmd, f"{self.key_path}: signing")
            return Path(sig).read_bytes()


class OpenSSLBackend(Backend):
    """``--backend openssl``; ``openssl`` is the command to run."""

    name = "openssl"

    def __init__(self, openssl: str = "openssl"):
        self.openssl = openssl

    def signer(self, key_path: str) -> Signer:
        """An OpenSSLSigner for ``key_path``."""
        return OpenSSLSigner(key_path, openssl=self.openssl)

    def verify(self, key: PublicKey, alg: SigAlg, message: bytes, signature: bytes) -> None:
        """Raise BadSignatureError unless ``openssl`` accepts ``signature``."""
        with tempfile.TemporaryDirectory(prefix="ota-verify-") as tmp:
            paths = {name: os.path.join(tmp, name) for name in ("pub", "msg", "sig")}
            Path(paths["pub"]).write_bytes(key.pem)
            Path(paths["msg"]).write_bytes(message)
            Path(paths["sig"]).write_bytes(signature)
            if alg is SigAlg.ED25519:
                cmd = [self.openssl, "pkeyutl", "-verify", "-pubin", "-inkey", paths["pub"], "-rawin",
                       "-in", paths["msg"], "-sigfile", paths["sig"]]
            else:
                cmd = [self.openssl, "dgst", "-sha256", "-verify", paths["pub"], "-signature", paths["sig"]]
                if alg is SigAlg.RSA_PSS_SHA256:
                    cmd += _PSS_OPTS
                cmd.append(paths["msg"])
            try:
                out = subprocess.run(cmd, capture_output=True, check=False, timeout=300)
            except FileNotFoundError:
                raise SigningError(f"verify: command not found: {self.openssl}") from None
            if out.returncode != 0:
                raise BadSignatureError("signature does not verify")

    def generate(self, algorithm: str, rsa_bits: int) -> Tuple[bytes, bytes]:
        """A new key pair from ``openssl genpkey`` (created under umask 077)."""
        if algorithm == "ed25519":
            gen = ["-algorithm", "ED25519"]
        elif algorithm == "ecdsa-p256":
            gen = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
        else:
            gen = ["-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{rsa_bits}"]
        old = os.umask(0o077)
        try:
            private_pem = run([self.openssl, "genpkey", *gen], "keygen")
        finally:
            os.umask(old)
        public_pem = run([self.openssl, "pkey", "-pubout"], "keygen", stdin=private_pem)
        return private_pem, public_pem
