"""SUIT manifests (seed 002): the draft-09 layout RIOT's suit-tool writes, signatures, and hostile manifests."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Tuple

import cbor2
import pytest

from ota_build.core import suit
from ota_build.core.errors import BadSignatureError, CorruptError, DowngradeError, TruncatedError, UnknownKeyError
from ota_build.core.signing import Keyring, generate_key, make_signer
from ota_build.core.signing.base import Signer


def _key(tmp_path: Path, alg: str, name: str = "k") -> Tuple[Signer, Keyring]:
    priv, pub = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    key = generate_key(alg, str(priv), str(pub), backend="cryptography")
    return make_signer(str(priv), backend="cryptography"), Keyring([key])


def _slots(tmp_path: Path) -> Tuple[Path, Path]:
    s0, s1 = tmp_path / "slot0.bin", tmp_path / "slot1.bin"
    s0.write_bytes(b"\x01" * 5000)
    s1.write_bytes(b"\x02" * 7000)
    return s0, s1


def _envelope(tmp_path: Path, signer: Signer, seq: int = 3) -> bytes:
    s0, s1 = _slots(tmp_path)
    return suit.write_manifest([str(s0), str(s1)], ["coap://[::1]/v1/slot0", "coap://[::1]/v1/slot1"], seq, signer,
                               vendor="riot-os.org", device_class="samr21-xpro")


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256"])
def test_signed_manifest_verifies_and_describes_both_slots(tmp_path: Path, alg: str) -> None:
    signer, ring = _key(tmp_path, alg)
    env = _envelope(tmp_path, signer)
    info = suit.verify_manifest(env, ring, current_sequence=2, vendor="riot-os.org", device_class="samr21-xpro")
    assert info.sequence_number == 3
    assert info.vendor_id == uuid.uuid5(uuid.NAMESPACE_DNS, "riot-os.org")
    assert info.class_id == uuid.uuid5(info.vendor_id, "samr21-xpro")
    assert [(s.offset, s.size, s.uri) for s in info.slots] == [(0x1000, 5000, "coap://[::1]/v1/slot0"),
                                                                (0x2000, 7000, "coap://[::1]/v1/slot1")]
    assert info.slots[1].sha256 == hashlib.sha256(b"\x02" * 7000).digest()
    suit.check_slot(info.slots[0], str(tmp_path / "slot0.bin"))
    suit.check_slot(info.slots[1], str(tmp_path / "slot1.bin"))


def test_layout_is_draft09_as_suit_tool_writes_it(tmp_path: Path) -> None:
    signer, _ = _key(tmp_path, "ecdsa-p256")
    env = cbor2.loads(_envelope(tmp_path, signer))
    assert set(env) == {2, 3}
    auth = cbor2.loads(env[2])
    sign1 = cbor2.loads(auth[0])
    assert sign1.tag == 18 and cbor2.loads(sign1.value[0]) == {1: -7} and len(sign1.value[3]) == 64
    assert list(cbor2.loads(sign1.value[2])) == [2, hashlib.sha256(cbor2.dumps(env[3])).digest()]
    manifest = cbor2.loads(env[3])
    assert manifest[1] == 1 and manifest[2] == 3 and set(manifest) == {1, 2, 3, 9, 10}
    common = cbor2.loads(manifest[3])
    assert common[2] == [[b"\x00"]]
    seq = cbor2.loads(common[4])
    assert seq[0] == 20 and seq[2] == 15 and seq[4:] == [1, 15, 2, 15]
    install = cbor2.loads(manifest[9])
    assert install[2:] == [21, 2, 3, 15]


def test_unsigned_manifest_is_refused(tmp_path: Path) -> None:
    signer, ring = _key(tmp_path, "ed25519")
    env = cbor2.loads(_envelope(tmp_path, signer))
    env[2] = cbor2.dumps([])
    with pytest.raises(BadSignatureError, match="unsigned"):
        suit.verify_manifest(cbor2.dumps(env), ring)
    del env[2]
    with pytest.raises(BadSignatureError, match="unsigned"):
        suit.verify_manifest(cbor2.dumps(env), ring)


def test_wrongly_signed_manifest_is_refused(tmp_path: Path) -> None:
    signer, _ = _key(tmp_path, "ed25519", "a")
    _, other_ring = _key(tmp_path, "ed25519", "b")
    env = _envelope(tmp_path, signer)
    with pytest.raises(UnknownKeyError):
        suit.verify_manifest(env, other_ring)
    # the kid removed: every trusted key is tried, none verifies
    doc = cbor2.loads(env)
    sign1 = cbor2.loads(cbor2.loads(doc[2])[0])
    sign1 = cbor2.CBORTag(18, [sign1.value[0], {}, sign1.value[2], sign1.value[3]])
    doc[2] = cbor2.dumps([cbor2.dumps(sign1)])
    with pytest.raises(BadSignatureError):
        suit.verify_manifest(cbor2.dumps(doc), other_ring)


def test_manifest_changed_after_signing_is_refused(tmp_path: Path) -> None:
    signer, ring = _key(tmp_path, "ecdsa-p256")
    doc = cbor2.loads(_envelope(tmp_path, signer, seq=3))
    manifest = cbor2.loads(doc[3])
    manifest[2] = 99
    doc[3] = cbor2.dumps(manifest)
    with pytest.raises(BadSignatureError, match="does not match"):
        suit.verify_manifest(cbor2.dumps(doc), ring)


def test_forged_signature_bytes_are_refused(tmp_path: Path) -> None:
    signer, ring = _key(tmp_path, "ecdsa-p256")
    doc = cbor2.loads(_envelope(tmp_path, signer))
    sign1 = cbor2.loads(cbor2.loads(doc[2])[0])
    sig = bytearray(sign1.value[3])
    sig[10] ^= 1
    sign1 = cbor2.CBORTag(18, [*sign1.value[:3], bytes(sig)])
    doc[2] = cbor2.dumps([cbor2.dumps(sign1)])
    with pytest.raises(BadSignatureError):
        suit.verify_manifest(cbor2.dumps(doc), ring)


@pytest.mark.parametrize("current", [3, 4])
def test_replayed_or_older_sequence_is_refused(tmp_path: Path, current: int) -> None:
    signer, ring = _key(tmp_path, "ed25519")
    with pytest.raises(DowngradeError, match="not above"):
        suit.verify_manifest(_envelope(tmp_path, signer, seq=3), ring, current_sequence=current)


def test_wrong_device_class_is_refused(tmp_path: Path) -> None:
    signer, ring = _key(tmp_path, "ed25519")
    with pytest.raises(suit.SuitError, match="not riot-os.org/other"):
        suit.verify_manifest(_envelope(tmp_path, signer), ring, vendor="riot-os.org", device_class="other")


def test_slot_digest_mismatch_and_truncation(tmp_path: Path) -> None:
    signer, ring = _key(tmp_path, "ed25519")
    info = suit.verify_manifest(_envelope(tmp_path, signer), ring)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x03" * 5000)
    with pytest.raises(CorruptError, match="digest mismatch"):
        suit.check_slot(info.slots[0], str(bad))
    bad.write_bytes(b"\x01" * 4999)
    with pytest.raises(TruncatedError, match="truncated"):
        suit.check_slot(info.slots[0], str(bad))


@pytest.mark.parametrize("blob", [b"", b"\xff\xff", cbor2.dumps([1, 2]), cbor2.dumps({3: 5}), b"not cbor at all"])
def test_garbage_is_refused_with_one_line(tmp_path: Path, blob: bytes) -> None:
    _, ring = _key(tmp_path, "ed25519")
    with pytest.raises((suit.SuitError, BadSignatureError)):
        suit.verify_manifest(blob, ring)


def test_mutated_envelopes_fail_with_verify_errors_only(tmp_path: Path) -> None:
    """Every single-byte change or truncation of a signed envelope is refused with a one-line VerifyError."""
    from ota_build.core.errors import VerifyError

    signer, ring = _key(tmp_path, "ed25519")
    env = _envelope(tmp_path, signer)
    for i in range(0, len(env), 3):
        mutated = bytearray(env)
        mutated[i] ^= 0x41
        for blob in (bytes(mutated), env[:i]):
            with pytest.raises(VerifyError):
                suit.verify_manifest(blob, ring)
