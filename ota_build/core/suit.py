"""SUIT manifests for two firmware slots (seed 002), as RIOT OS's ``suit-tool`` writes them.

The layout follows **draft-ietf-suit-manifest-09**, the draft RIOT's bundled
``dist/tools/suit/suit-manifest-generator`` implements (docs/suit.md):

* envelope: a CBOR map ``{2: bstr .cbor authentication-wrapper, 3: bstr .cbor manifest}``;
* authentication wrapper: ``[ bstr .cbor COSE_Sign1_Tagged ]``; the COSE payload is
  ``bstr .cbor [2 (sha256), sha256(cbor(envelope[3]))]``, signed as COSE's
  ``["Signature1", protected, h'', payload]`` with ES256 (raw r||s) or EdDSA;
* manifest: version 1, sequence number (anti-rollback), common (one component
  ``[h'00']``, vendor and class id as UUID v5 like RIOT's ``gen_manifest.py``,
  a try-each per slot with its offset, image digest and size), install
  (try-each per slot with offset and URI, then fetch and image-match) and
  validate (image-match).

CBOR is ``cbor2`` and signatures go through ``ota_build.core.signing`` (the
``cryptography`` library or ``openssl``); both are imported lazily so core stays
importable with the standard library only.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ota_build.core.errors import (BadSignatureError, CorruptError, DowngradeError, TruncatedError, UnknownKeyError,
                                   UsageError, VerifyError)
from ota_build.core.header import SigAlg
from ota_build.core.signing import sign_message
from ota_build.core.signing.base import Signer
from ota_build.core.signing.keys import Keyring, PublicKey

log = logging.getLogger(__name__)

#: the SUIT draft this module writes and reads
SUIT_DRAFT = "draft-ietf-suit-manifest-09"

# envelope / manifest / common keys (draft-09)
ENV_AUTH, ENV_MANIFEST = 2, 3
M_VERSION, M_SEQUENCE, M_COMMON, M_INSTALL, M_VALIDATE = 1, 2, 3, 9, 10
C_COMPONENTS, C_SEQUENCE = 2, 4
# commands
CMD_VENDOR_ID, CMD_CLASS_ID, CMD_IMAGE_MATCH, CMD_COMPONENT_OFFSET = 1, 2, 3, 5
CMD_TRY_EACH, CMD_SET_PARAMS, CMD_OVERRIDE_PARAMS, CMD_FETCH = 15, 19, 20, 21
# parameters
P_VENDOR_ID, P_CLASS_ID, P_DIGEST, P_OFFSET, P_SIZE, P_URI = 1, 2, 3, 5, 14, 21
DIGEST_SHA256 = 2  # draft-09's SUIT_Digest algorithm id (COSE's -16 came with later drafts)
COSE_ALG_ES256, COSE_ALG_EDDSA = -7, -8
COSE_HDR_ALG, COSE_HDR_KID = 1, 4
COSE_SIGN1_TAG = 18
COSE_ALGS = {SigAlg.ECDSA_P256_SHA256: COSE_ALG_ES256, SigAlg.ED25519: COSE_ALG_EDDSA}
POLICY_ALL, POLICY_OFFSET, POLICY_DIRECTIVE = 0xF, 0x5, 0x2

#: RIOT's default slot offsets in its test manifests (the offset parameter tells the slots apart)
DEFAULT_OFFSETS = (0x1000, 0x2000)


class SuitError(VerifyError):
    """A SUIT envelope that is not well-formed or lacks what a device needs."""

    exit_code = 10
    reason = "corrupt"


def _cbor() -> Any:
    try:
        import cbor2
    except ImportError:  # pragma: no cover - the extra is missing
        raise UsageError("SUIT manifests need cbor2: pip install 'ota_build[suit]'") from None
    return cbor2


def _dumps(obj: Any) -> bytes:
    return bytes(_cbor().dumps(obj, canonical=True))


def vendor_class_ids(vendor: str, device_class: str) -> Tuple[uuid.UUID, uuid.UUID]:
    """RIOT's ids: vendor = UUID5(DNS namespace, vendor name), class = UUID5(vendor, class name)."""
    vendor_id = uuid.uuid5(uuid.NAMESPACE_DNS, vendor)
    return vendor_id, uuid.uuid5(vendor_id, device_class)


@dataclass(frozen=True)
class SlotImage:
    """One slot's payload as the manifest describes it."""

    offset: int
    size: int
    sha256: bytes
    uri: str = ""


@dataclass(frozen=True)
class SuitManifest:
    """What ``verify_manifest`` found in a (verified) envelope."""

    sequence_number: int
    vendor_id: Optional[uuid.UUID]
    class_id: Optional[uuid.UUID]
    slots: List[SlotImage] = field(default_factory=list)
    key_id: bytes = b""


def _file_digest(path: str) -> Tuple[int, bytes]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.digest()


def _seq(*commands: Tuple[int, Any]) -> List[Any]:
    out: List[Any] = []
    for cmd, arg in commands:
        out += [cmd, arg]
    return out


def build_manifest(slots: Sequence[SlotImage], sequence_number: int, vendor: str = "riot-os.org",
                   device_class: str = "native") -> bytes:
    """The CBOR of a draft-09 SUIT_Manifest for ``slots`` (the bytes that go into envelope key 3)."""
    if not slots:
        raise UsageError("a SUIT manifest needs at least one slot image")
    if sequence_number < 0:
        raise UsageError(f"sequence number {sequence_number} must be >= 0")
    if len({s.offset for s in slots}) != len(slots):
        raise UsageError("every slot needs its own offset")
    vendor_id, class_id = vendor_class_ids(vendor, device_class)
    common_choices = [_dumps(_seq((CMD_OVERRIDE_PARAMS, {P_OFFSET: s.offset}), (CMD_COMPONENT_OFFSET, POLICY_OFFSET),
                                  (CMD_OVERRIDE_PARAMS, {P_DIGEST: _dumps([DIGEST_SHA256, s.sha256]),
                                                         P_SIZE: s.size})))
                      for s in slots]
    common_seq = _seq((CMD_OVERRIDE_PARAMS, {P_VENDOR_ID: vendor_id.bytes, P_CLASS_ID: class_id.bytes}),
                      (CMD_TRY_EACH, common_choices), (CMD_VENDOR_ID, POLICY_ALL), (CMD_CLASS_ID, POLICY_ALL))
    install_choices = [_dumps(_seq((CMD_SET_PARAMS, {P_OFFSET: s.offset}), (CMD_COMPONENT_OFFSET, POLICY_OFFSET),
                                   (CMD_SET_PARAMS, {P_URI: s.uri}))) for s in slots]
    install_seq = _seq((CMD_TRY_EACH, install_choices), (CMD_FETCH, POLICY_DIRECTIVE), (CMD_IMAGE_MATCH, POLICY_ALL))
    manifest = {
        M_VERSION: 1,
        M_SEQUENCE: sequence_number,
        M_COMMON: _dumps({C_COMPONENTS: [[b"\x00"]], C_SEQUENCE: _dumps(common_seq)}),
        M_INSTALL: _dumps(install_seq),
        M_VALIDATE: _dumps(_seq((CMD_IMAGE_MATCH, POLICY_ALL))),
    }
    return _dumps(manifest)


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return _dumps(["Signature1", protected, b"", payload])


def _manifest_digest(manifest_bstr: bytes) -> bytes:
    # suit-tool hashes the manifest as it sits in the envelope: the CBOR byte string (header + bytes)
    return hashlib.sha256(_dumps(manifest_bstr)).digest()


def _raw_from_der(der: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _der_from_raw(raw: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if len(raw) != 64:
        raise BadSignatureError(f"ES256 signature of {len(raw)} bytes (COSE wants 64: r || s)")
    return bytes(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")))


def sign_envelope(manifest: bytes, signer: Signer) -> bytes:
    """The SUIT envelope of ``manifest`` with one COSE_Sign1 (ES256 or EdDSA by ``signer``'s key)."""
    cbor2 = _cbor()
    alg = signer.algorithm
    if alg not in COSE_ALGS:
        raise UsageError(f"SUIT manifests are signed with ed25519 or ecdsa-p256, not {alg.label}")
    protected = _dumps({COSE_HDR_ALG: COSE_ALGS[alg]})
    payload = _dumps([DIGEST_SHA256, _manifest_digest(manifest)])
    signature = sign_message(signer, _sig_structure(protected, payload))  # ECDSA: low-S, as every verify path wants
    if alg is SigAlg.ECDSA_P256_SHA256:
        signature = _raw_from_der(signature)
    sign1 = cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {COSE_HDR_KID: signer.key_id}, payload, signature])
    auth = _dumps([_dumps(sign1)])
    return _dumps({ENV_AUTH: auth, ENV_MANIFEST: manifest})


def write_manifest(slot_paths: Sequence[str], uris: Sequence[str], sequence_number: int, signer: Signer,
                   vendor: str = "riot-os.org", device_class: str = "native",
                   offsets: Sequence[int] = DEFAULT_OFFSETS) -> bytes:
    """Hash the slot files and return a signed envelope (slot i at ``offsets[i]``, fetched from ``uris[i]``)."""
    if len(offsets) < len(slot_paths) or len(uris) != len(slot_paths):
        raise UsageError("one URI and one offset per slot image")
    slots = []
    for i, path in enumerate(slot_paths):
        uri, offset = uris[i], offsets[i]
        try:
            size, digest = _file_digest(path)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror}") from None
        slots.append(SlotImage(offset, size, digest, uri))
    return sign_envelope(build_manifest(slots, sequence_number, vendor, device_class), signer)


# --------------------------------------------------------------------------- reading

def _loads(data: Any, what: str) -> Any:
    if not isinstance(data, bytes):
        raise SuitError(f"{what}: expected a CBOR byte string")
    try:
        return _cbor().loads(data)
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise SuitError(f"{what}: not CBOR ({exc})") from None


def _pairs(seq: Any, what: str) -> List[Tuple[int, Any]]:
    if not isinstance(seq, (list, tuple)) or len(seq) % 2:
        raise SuitError(f"{what}: a command sequence is a list of (command, argument) pairs")
    return [(seq[i], seq[i + 1]) for i in range(0, len(seq), 2)]


def _choices(seq: List[Tuple[int, Any]], what: str) -> Tuple[Dict[int, Any], List[Dict[int, Any]]]:
    """Parameters set outside try-each, and the parameters of each try-each choice."""
    common: Dict[int, Any] = {}
    choices: List[Dict[int, Any]] = []
    for cmd, arg in seq:
        if cmd in (CMD_SET_PARAMS, CMD_OVERRIDE_PARAMS) and isinstance(arg, Mapping):
            common.update(arg)
        elif cmd == CMD_TRY_EACH:
            if not isinstance(arg, (list, tuple)):
                raise SuitError(f"{what}: try-each needs a list")
            for i, entry in enumerate(arg):
                params: Dict[int, Any] = {}
                for c2, a2 in _pairs(_loads(entry, f"{what} try-each {i}"), f"{what} try-each {i}"):
                    if c2 in (CMD_SET_PARAMS, CMD_OVERRIDE_PARAMS) and isinstance(a2, Mapping):
                        params.update(a2)
                choices.append(params)
    return common, choices


def parse_envelope(envelope: bytes) -> Tuple[Mapping[int, Any], Sequence[Any], bytes]:
    """(envelope map, authentication blocks, manifest bytes) of a SUIT envelope, unverified."""
    env = _loads(envelope, "SUIT envelope")
    if not isinstance(env, Mapping) or not isinstance(env.get(ENV_MANIFEST), bytes):
        raise SuitError("not a SUIT envelope (no manifest, key 3)")
    auth = env.get(ENV_AUTH)
    blocks = _loads(auth, "authentication wrapper") if auth is not None else []
    if not isinstance(blocks, (list, tuple)):
        raise SuitError("authentication wrapper: expected a list")
    return env, blocks, env[ENV_MANIFEST]


def describe_manifest(manifest_bytes: bytes) -> SuitManifest:
    """The sequence number, ids and slots of a manifest (no signature check)."""
    m = _loads(manifest_bytes, "manifest")
    if not isinstance(m, Mapping) or m.get(M_VERSION) != 1:
        raise SuitError("manifest: not a SUIT manifest of version 1")
    seq_no = m.get(M_SEQUENCE)
    if not isinstance(seq_no, int) or seq_no < 0:
        raise SuitError("manifest: no sequence number")
    common = _loads(m.get(M_COMMON), "common")
    if not isinstance(common, Mapping):
        raise SuitError("common: expected a map")
    c_common, c_choices = _choices(_pairs(_loads(common.get(C_SEQUENCE), "common sequence"), "common sequence"),
                                   "common sequence")
    i_choices: List[Dict[int, Any]] = []
    if M_INSTALL in m:
        _, i_choices = _choices(_pairs(_loads(m[M_INSTALL], "install"), "install"), "install")
    uris = {c.get(P_OFFSET): c.get(P_URI, "") for c in i_choices}
    if not c_choices:  # a single image without try-each
        c_choices = [c_common]
    slots = []
    for i, params in enumerate(c_choices):
        merged = {**c_common, **params}
        digest = _loads(merged.get(P_DIGEST), f"slot {i} image digest")
        size = merged.get(P_SIZE)
        if not (isinstance(digest, (list, tuple)) and len(digest) == 2 and digest[0] == DIGEST_SHA256
                and isinstance(digest[1], bytes) and len(digest[1]) == 32):
            raise SuitError(f"slot {i}: image digest is not a sha256 SUIT_Digest")
        if not isinstance(size, int) or size < 0:
            raise SuitError(f"slot {i}: no image size")
        offset = merged.get(P_OFFSET, 0)
        slots.append(SlotImage(offset, size, digest[1], str(uris.get(offset, ""))))

    def _uuid(raw: Any) -> Optional[uuid.UUID]:
        return uuid.UUID(bytes=raw) if isinstance(raw, bytes) and len(raw) == 16 else None

    return SuitManifest(seq_no, _uuid(c_common.get(P_VENDOR_ID)), _uuid(c_common.get(P_CLASS_ID)), slots)


def _keys_of(keyring: Keyring, kid: Any) -> List[PublicKey]:
    if isinstance(kid, bytes) and kid:
        return [keyring.get(kid)]
    return list(keyring.keys())


def _check_signature(blocks: Sequence[Any], manifest_bytes: bytes, keyring: Keyring, backend: str) -> bytes:
    """The key id that signed the manifest; BadSignatureError / UnknownKeyError otherwise."""
    from ota_build.core.signing import verify_signature

    cbor2 = _cbor()
    if not blocks:
        raise BadSignatureError("unsigned SUIT manifest (empty authentication wrapper)")
    expected = _manifest_digest(manifest_bytes)
    last: Optional[VerifyError] = None
    for i, raw in enumerate(blocks):
        tagged = _loads(raw, f"authentication block {i}")
        if not isinstance(tagged, cbor2.CBORTag) or tagged.tag != COSE_SIGN1_TAG \
                or not isinstance(tagged.value, (list, tuple)) or len(tagged.value) != 4:
            last = BadSignatureError(f"authentication block {i} is not a COSE_Sign1")
            continue
        protected, unprotected, payload, signature = tagged.value
        header = _loads(protected, "COSE protected header")
        alg_id = header.get(COSE_HDR_ALG) if isinstance(header, Mapping) else None
        alg = next((a for a, v in COSE_ALGS.items() if v == alg_id), None)
        if alg is None or not isinstance(payload, bytes) or not isinstance(signature, bytes):
            last = BadSignatureError(f"authentication block {i}: unsupported COSE algorithm or missing payload")
            continue
        digest = _loads(payload, "COSE payload")
        if not isinstance(digest, (list, tuple)) or list(digest) != [DIGEST_SHA256, expected]:
            last = BadSignatureError("the signed digest does not match the manifest (manifest changed after signing)")
            continue
        kid = unprotected.get(COSE_HDR_KID) if isinstance(unprotected, Mapping) else None
        try:
            candidates = _keys_of(keyring, kid)
        except UnknownKeyError as exc:
            last = exc
            continue
        message = _sig_structure(protected, payload)
        for key in candidates:
            if key.algorithm is not alg:
                continue
            sig = _der_from_raw(signature) if alg is SigAlg.ECDSA_P256_SHA256 else signature
            try:
                verify_signature(key, alg, message, sig, backend=backend)
            except BadSignatureError as exc:
                last = exc
                continue
            return key.key_id
        if last is None:
            last = BadSignatureError("signature does not verify with any trusted key")
    assert last is not None
    raise BadSignatureError(f"SUIT manifest: {last}") if not isinstance(last, UnknownKeyError) else last


def verify_manifest(envelope: bytes, keyring: Keyring, current_sequence: int = -1, vendor: Optional[str] = None,
                    device_class: Optional[str] = None, backend: str = "auto") -> SuitManifest:
    """Verify a SUIT envelope as a device does: a trusted signature over the manifest, a sequence number above
    ``current_sequence`` (anti-rollback) and, when given, the vendor and class names. Returns what it describes;
    raises BadSignatureError, UnknownKeyError, DowngradeError or SuitError (one line each)."""
    _, blocks, manifest_bytes = parse_envelope(envelope)
    key_id = _check_signature(blocks, manifest_bytes, keyring, backend)
    info = describe_manifest(manifest_bytes)
    if info.sequence_number <= current_sequence:
        raise DowngradeError(f"SUIT sequence number {info.sequence_number} is not above the current "
                             f"{current_sequence} (replayed or older manifest)")
    if vendor is not None and device_class is not None:
        want_vendor, want_class = vendor_class_ids(vendor, device_class)
        if info.vendor_id != want_vendor or info.class_id != want_class:
            raise SuitError(f"manifest is for vendor {info.vendor_id} class {info.class_id}, "
                            f"not {vendor}/{device_class}")
    return SuitManifest(info.sequence_number, info.vendor_id, info.class_id, info.slots, key_id)


def check_slot(slot: SlotImage, path: str) -> None:
    """TruncatedError / CorruptError unless the file at ``path`` has the slot's size and sha256."""
    try:
        size, digest = _file_digest(path)
    except OSError as exc:
        raise TruncatedError(f"{path}: {exc.strerror}") from None
    if size < slot.size:
        raise TruncatedError(f"slot image truncated: {size} of {slot.size} bytes")
    if size != slot.size:
        raise CorruptError(f"slot image is {size} bytes, the manifest says {slot.size}")
    if digest != slot.sha256:
        raise CorruptError(f"slot image digest mismatch: sha256 {digest.hex()[:16]}…, manifest {slot.sha256.hex()[:16]}…")


def read_sequence_file(path: str) -> int:
    """The last accepted sequence number stored at ``path`` (-1 when there is none)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except FileNotFoundError:
        return -1
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a sequence number ({exc})") from None


__all__ = ["SUIT_DRAFT", "SlotImage", "SuitManifest", "SuitError", "build_manifest", "sign_envelope", "write_manifest",
           "verify_manifest", "describe_manifest", "check_slot", "vendor_class_ids", "parse_envelope",
           "read_sequence_file", "DEFAULT_OFFSETS"]
