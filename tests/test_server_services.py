"""The service layer's rules without HTTP: a real SQLite database (migrated like the server's) and a real
Storage in tmp_path. The HTTP mapping of these rules is covered by the other test_server_* modules."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import AsyncIterator, Tuple

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from ota_build.core.package import package_image
from ota_build.core.signing import make_signer
from ota_build.server import admin, services
from ota_build.server.db import MIGRATIONS, Database, default_database_url, migrate
from ota_build.server.models import Binary, Device, DeviceType, OtaRecord, UploadSession
from ota_build.server.services import Kind, RecordFields, ServiceError
from ota_build.server.storage import Storage, TooLarge

REPO = "https://ota.example/v1/ota/partners/{pid}/repository/{sha}"


def expect(kind: Kind, fn, *args, **kwargs) -> ServiceError:  # noqa: ANN001
    """Call ``fn`` and return the ServiceError of ``kind`` it must raise."""
    with pytest.raises(ServiceError) as info:
        fn(*args, **kwargs)
    assert info.value.kind is kind, info.value
    return info.value


def image(tmp_path: Path, key: str, version_number: int, ota_type: int = 5) -> Tuple[str, str, int]:
    """A real signed hub_update.bin copied into storage's tmp/ as an upload would be: (tmp, sha256, size)."""
    payload = tmp_path / f"payload-{version_number}-{ota_type}"
    payload.write_bytes(os.urandom(5000))
    out = tmp_path / f"img-{version_number}-{ota_type}.bin"
    package_image(str(payload), str(out), make_signer(key, backend="cryptography"), ota_type, version_number)
    data = out.read_bytes()
    return str(out), hashlib.sha256(data).hexdigest(), len(data)


def store_image(db: Database, storage: Storage, pk: int, tmp_path: Path, key: str, version_number: int,
                ota_type: int = 5, publish: bool = True) -> str:
    """Upload (and by default publish) a real image; its SHA-256."""
    src, sha, size = image(tmp_path, key, version_number, ota_type)
    tmp, got, got_size = storage.copy_in([Path(src).read_bytes()])
    assert (got, got_size) == (sha, size)
    with db.session() as s:
        services.accept_binary(s, storage, pk, tmp, sha, size)
        if publish:
            services.move_to_repository(s, pk, sha)
    assert not Path(tmp).exists() and storage.blob_path(sha).exists()
    return sha


# --------------------------------------------------------------------------- versionNumbers

def test_version_numbers_are_assigned_per_partner_and_type(env):
    db, _storage, pk = env
    with db.session() as s:
        first = services.create_record(s, pk, RecordFields("fw", 5, "1.0"))
        second = services.create_record(s, pk, RecordFields("fw", 5, "1.1"))
        other_type = services.create_record(s, pk, RecordFields("fw", 7, "1.0"))
        assert (first.version_number, second.version_number, other_type.version_number) == (1, 2, 1)
        assert isinstance(second.version_number, int)
        wanted = services.create_record(s, pk, RecordFields("fw", 5, "2.0", version_number=40))
        assert wanted.version_number == 40
        assert services.create_record(s, pk, RecordFields("fw", 5, "2.1")).version_number == 41
        # compared as integers: 9 is below 40 although "9" > "40" as text
        err = expect(Kind.CONFLICT, services.create_record, s, pk, RecordFields("fw", 5, "3.0", version_number=9))
        assert "not above the latest (41)" in err.message
        expect(Kind.CONFLICT, services.create_record, s, pk, RecordFields("fw", 5, "3.0", version_number=41))
        err = expect(Kind.CONFLICT, services.create_record, s, pk, RecordFields("fw", 5, "1.0"))
        assert "already exists" in err.message
        assert services.record_exists(s, pk, 5, "fw", "2.0") and not services.record_exists(s, pk, 5, "fw", "9.9")


def test_update_record_keeps_name_and_version_and_links_the_binary(env, tmp_path, keys):
    db, storage, pk = env
    with db.session() as s:
        rec = services.create_record(s, pk, RecordFields("fw", 5, "1.0"))
        expect(Kind.NOT_FOUND, services.update_record, s, pk, 5, 99, RecordFields("fw", 5, "1.0"))
        expect(Kind.CONFLICT, services.update_record, s, pk, 5, rec.version_number, RecordFields("fw", 5, "1.1"))
    # the URL is written before the binary exists: the link appears when the binary is stored
    src, sha, _size = image(tmp_path, keys["ed25519"]["private"], 1)
    url = REPO.format(pid="p1", sha=sha)
    with db.session() as s:
        rec = services.update_record(s, pk, 5, 1, RecordFields("fw", 5, "1.0", url=url, description="new"))
        assert rec.url == url and rec.binary_pk is None and rec.description == "new"
    tmp, _sha, size = storage.copy_in([Path(src).read_bytes()])
    with db.session() as s:
        services.accept_binary(s, storage, pk, tmp, sha, size)
        rec = s.scalar(sa.select(OtaRecord).where(OtaRecord.version_number == 1))
        binary = services.binary_of(s, rec)
        assert binary is not None and binary.sha256 == sha and rec.url == url
        # a URL that names no stored binary unlinks it; the URL is kept as given
        rec = services.update_record(s, pk, 5, 1, RecordFields("fw", 5, "1.0", url="https://elsewhere/x.bin"))
        assert rec.binary_pk is None and services.binary_of(s, rec) is None and rec.url == "https://elsewhere/x.bin"


def test_a_rejected_image_is_not_stored(env, tmp_path):
    db, storage, pk = env
    tmp, sha, size = storage.copy_in([b"not an image at all" * 10])
    with db.session() as s:
        err = expect(Kind.INVALID, services.accept_binary, s, storage, pk, tmp, sha, size)
        assert err.message.startswith("image rejected (")
        assert s.scalar(sa.select(sa.func.count(Binary.id))) == 0
    assert not Path(tmp).exists() and not storage.blob_path(sha).exists()
    with db.session() as s:
        expect(Kind.NOT_FOUND, services.move_to_repository, s, pk, sha)


# --------------------------------------------------------------------------- associations and deploys

def test_association_is_refused_without_a_matching_published_image(env, tmp_path, keys):
    db, storage, pk = env
    key = keys["ed25519"]["private"]
    admin.add_device_type(db, "p1", "dt1")
    with db.session() as s:
        dtype = services.find_device_type(s, pk, "dt1")
        expect(Kind.NOT_FOUND, services.find_device_type, s, pk, "nope")
        expect(Kind.NOT_FOUND, services.associate, s, pk, dtype, 5, 1, "fw", "1.0")
        services.create_record(s, pk, RecordFields("fw", 5, "1.0"))
        services.create_record(s, pk, RecordFields("fw", 5, "1.1"))
        err = expect(Kind.INVALID, services.associate, s, pk, dtype, 5, 1, "fw", "1.0")
        assert "no uploaded image in the repository" in err.message
    unpublished = store_image(db, storage, pk, tmp_path, key, 1, publish=False)
    wrong_number = store_image(db, storage, pk, tmp_path, key, 7)
    with db.session() as s:
        services.update_record(s, pk, 5, 1, RecordFields("fw", 5, "1.0", url=REPO.format(pid="p1", sha=unpublished)))
        expect(Kind.INVALID, services.associate, s, pk, dtype, 5, 1, "fw", "1.0")
        services.update_record(s, pk, 5, 2, RecordFields("fw", 5, "1.1", url=REPO.format(pid="p1", sha=wrong_number)))
        err = expect(Kind.INVALID, services.associate, s, pk, dtype, 5, None, "fw", "1.1")
        assert "header says type 5 versionNumber 7" in err.message
        services.move_to_repository(s, pk, unpublished)
        img, rec, binary = services.associate(s, pk, dtype, 5, None, "fw", "1.0")  # by name and version
        assert (img.version_number, rec.version, binary and binary.sha256) == (1, "1.0", unpublished)
        expect(Kind.CONFLICT, services.associate, s, pk, dtype, 5, 1, "fw", "1.0")
        assert services.image_by_version(s, dtype, 5, 1)[0].id == img.id
        expect(Kind.NOT_FOUND, services.image_by_version, s, dtype, 5, 2)
        total, rows = services.list_images(s, dtype, 5, 0, 20)
        assert total == 1 and [r[0].id for r in rows] == [img.id]

        # deploys: a target is needed, devices and groups must exist for this device type
        expect(Kind.INVALID, services.push, s, pk, dtype, img.id, [], None)
        expect(Kind.NOT_FOUND, services.push, s, pk, dtype, img.id + 1000, ["d1"], None)
        expect(Kind.NOT_FOUND, services.push, s, pk, dtype, img.id, ["d1"], None)
    admin.device_token(db, "p1", "dt1", "d1", group="lab")
    with db.session() as s:
        dtype = s.scalar(sa.select(DeviceType).where(DeviceType.device_type_id == "dt1"))
        expect(Kind.NOT_FOUND, services.push, s, pk, dtype, img.id, [], "no-such-group")
        assert services.push(s, pk, dtype, img.id, ["d1"], "lab") == 2
        dev = s.scalar(sa.select(Device).where(Device.device_id == "d1"))
        found = services.update_for(s, dev, 5, 0)
        assert found is not None and found[2].sha256 == unpublished
        assert services.update_for(s, dev, 5, 1) is None
        assert services.deployed_binary(s, dev, img.id).sha256 == unpublished
        services.report_status(s, dev, "installed", 2 ** 63 - 1, "ok")
    with db.session() as s:
        assert s.scalar(sa.select(Device.state_version_number)) == 2 ** 63 - 1


# --------------------------------------------------------------------------- resumable uploads

async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def append(storage: Storage, sess: UploadSession, start: int, end: int, *parts: bytes) -> int:
    return asyncio.run(services.append_chunk(storage, sess, start, end, sess.size, _chunks(*parts)))


def test_upload_sessions_expire_and_are_capped(env):
    db, storage, pk = env
    base = services.utcnow()
    hours = dt.timedelta(hours=services.UPLOAD_SESSION_HOURS)
    then = base - hours + dt.timedelta(minutes=1)  # a minute before the stale session expires
    with db.session() as s:
        expect(Kind.TOO_LARGE, services.start_upload, s, storage, pk, storage.max_upload_bytes + 1)
        stale = services.start_upload(s, storage, pk, 10, now=base - hours - dt.timedelta(minutes=1))
        assert storage.part_path(stale.id).exists()
        fresh = [services.start_upload(s, storage, pk, 10, now=then) for _ in range(services.MAX_OPEN_UPLOADS - 1)]
        err = expect(Kind.TOO_MANY, services.start_upload, s, storage, pk, 10, now=then)
        assert f"{services.MAX_OPEN_UPLOADS} unfinished uploads" in err.message
        # now the stale one is past the expiry and dropped (row and .part file); the others stay
        assert services.expire_uploads(s, storage, now=base) == 1
        assert not storage.part_path(stale.id).exists()
        expect(Kind.NOT_FOUND, services.upload_session, s, pk, stale.id)
        assert services.upload_session(s, pk, fresh[0].id).size == 10
        expect(Kind.NOT_FOUND, services.upload_session, s, pk + 1, fresh[0].id)  # another partner's
        assert services.start_upload(s, storage, pk, 10).id not in {f.id for f in fresh}


def test_chunks_append_only_at_the_current_offset(env):
    db, storage, pk = env
    with db.session() as s:
        sess = services.start_upload(s, storage, pk, 10)
    assert append(storage, sess, 0, 3, b"0123") == 4
    err = expect(Kind.CONFLICT, append, storage, sess, 0, 3, b"0123")  # a repeat: the server is ahead
    assert err.details == {"offset": 4} and "offset 4, not 0" in err.message
    assert expect(Kind.CONFLICT, append, storage, sess, 6, 9, b"6789").details == {"offset": 4}
    expect(Kind.INVALID, append, storage, sess, 4, 10, b"x")  # past the upload's size
    expect(Kind.INVALID, append, storage, sess, 5, 4, b"x")
    with pytest.raises(ServiceError) as info:
        asyncio.run(services.append_chunk(storage, sess, 4, 9, 11, _chunks(b"x")))  # total is not the size
    assert info.value.kind is Kind.INVALID
    expect(Kind.INVALID, append, storage, sess, 4, 5, b"45", b"6")  # body longer than the range
    assert services.upload_offset(storage, sess.id) == 6  # what arrived within the range is kept
    with db.session() as s:
        err = expect(Kind.CONFLICT, services.complete_upload, s, storage, pk, sess.id)
        assert "6 of 10 bytes" in err.message
    assert append(storage, sess, 6, 9, b"6789") == 10
    with db.session() as s:  # complete: not an image, so rejected, and the session is over either way
        expect(Kind.INVALID, services.complete_upload, s, storage, pk, sess.id)
        expect(Kind.NOT_FOUND, services.upload_session, s, pk, sess.id)
    assert not storage.part_path(sess.id).exists() and not list((storage.root / "tmp").iterdir())


def test_complete_upload_stores_the_image(env, tmp_path, keys):
    db, storage, pk = env
    src, sha, size = image(tmp_path, keys["ed25519"]["private"], 3)
    data = Path(src).read_bytes()
    with db.session() as s:
        sess = services.start_upload(s, storage, pk, size)
    half = size // 2
    append(storage, sess, 0, half - 1, data[:half])
    append(storage, sess, half, size - 1, data[half:])
    with db.session() as s:
        assert services.complete_upload(s, storage, pk, sess.id) == sha
        assert s.scalar(sa.select(Binary.version_number).where(Binary.sha256 == sha)) == 3
        expect(Kind.NOT_FOUND, services.complete_upload, s, storage, pk, sess.id)
    assert storage.blob_path(sha).read_bytes() == data


# --------------------------------------------------------------------------- packages and storage

def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "a")
    return buf.getvalue()


def content(sha: str, version: str = "1.0.0") -> str:
    import json

    return json.dumps({"package": "app", "version": version, "branch": "main", "local": "", "remote": "",
                       "sha256": sha, "BeforeUpdate": "", "AfterUpdate": "", "dependencies": {}})


def test_packages_belong_to_their_first_partner(env):
    db, storage, pk = env
    admin.create_partner(db, "p2@example.com", partner_id="p2")
    data = zip_bytes()
    sha = hashlib.sha256(data).hexdigest()
    with db.session() as s:
        other = s.scalar(sa.text("SELECT id FROM partners WHERE partner_id = 'p2'"))
        stored = services.store_package(s, storage, content(sha), io.BytesIO(data), False, pk)
        assert stored.url == "/otafiles/app/main/app-main-1.0.0.zip" and stored.size == len(data)
        expect(Kind.FORBIDDEN, services.store_package, s, storage, content(sha, "1.0.1"), io.BytesIO(data), False, other)
        assert expect(Kind.CONFLICT, services.store_package, s, storage, content(sha), io.BytesIO(data), False,
                      pk).details == {"TIP": "add overwrite=1 (or force=1) to the URL to replace it"}
        expect(Kind.INVALID, services.store_package, s, storage, content("0" * 64, "1.0.2"), io.BytesIO(data), False, pk)
        expect(Kind.INVALID, services.store_package, s, storage, "{", io.BytesIO(data), False, pk)
        assert services.store_package(s, storage, content(sha), io.BytesIO(data), True, pk).sha256 == sha
        assert [p.version for p in services.package_versions(s, "app", None, None)] == ["1.0.0"]
    assert (storage.root / "otafiles/app/main/app-main-1.0.0.zip").read_bytes() == data


def test_storage_receives_sync_and_async_alike(tmp_path):
    storage = Storage(str(tmp_path / "data"), max_upload_bytes=10)
    chunks = [b"01234", b"5678"]
    path, sha, size = storage.copy_in(chunks)
    apath, asha, asize = asyncio.run(storage.receive(_chunks(*chunks)))
    assert (sha, size) == (asha, asize) == (hashlib.sha256(b"012345678").hexdigest(), 9)
    assert Path(path).read_bytes() == Path(apath).read_bytes() == b"012345678"
    for receive in (lambda c: storage.copy_in(c), lambda c: asyncio.run(storage.receive(_chunks(*c)))):
        with pytest.raises(TooLarge):
            receive([b"01234", b"567890"])
    assert sorted(p.name for p in (tmp_path / "data" / "tmp").iterdir()) == sorted([Path(path).name, Path(apath).name])


# --------------------------------------------------------------------------- migration 0004

def upgrade_to(db: Database, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_migration_0004_links_records_to_binaries_from_their_urls(tmp_path):
    db = Database(default_database_url(str(tmp_path)), run_migrations=False)
    upgrade_to(db, "0003")
    sha, other = "a" * 64, "b" * 64
    now = services.utcnow().isoformat()
    rows = (
        "INSERT INTO partners (id, partner_id, username, password_hash, client_id, client_secret_hash, created) "
        "VALUES (1, 'p1', 'u1', 'x', 'c', 'x', :now), (2, 'p2', 'u2', 'x', 'c', 'x', :now)",
        "INSERT INTO binaries (id, partner_pk, sha256, size, version_number, ota_type, in_repository, created) "
        f"VALUES (7, 1, '{sha}', 10, 1, 5, 1, :now), (8, 2, '{other}', 10, 1, 5, 1, :now)",
        "INSERT INTO ota_records (id, partner_pk, name, ota_type, version, version_number, description, url, url2, "
        "tags, created_ms, updated_ms) VALUES "
        f"(1, 1, 'fw', 5, '1', 1, '', 'http://h/v1/ota/partners/p1/repository/{sha}', '', '[]', 0, 0), "
        f"(2, 1, 'fw', 5, '2', 2, '', 'http://h/v1/ota/partners/p1/repository/{other}', '', '[]', 0, 0), "
        "(3, 1, 'fw', 5, '3', 3, '', 'https://cdn.example/fw.bin', '', '[]', 0, 0), "
        "(4, 1, 'fw', 5, '4', 4, '', '', '', '[]', 0, 0)",
        "INSERT INTO device_types (id, partner_pk, device_type_id) VALUES (1, 1, 'dt')",
        "INSERT INTO devices (id, partner_pk, device_type_pk, device_id, state_version_number) VALUES "
        "(1, 1, 1, 'd1', '9223372036854775807'), (2, 1, 1, 'd2', NULL), (3, 1, 1, 'd3', '')",
    )
    with db.engine.begin() as conn:
        for sql in rows:
            conn.execute(sa.text(sql), {"now": now})
    migrate(db.engine)
    with db.engine.connect() as conn:
        links = dict(conn.execute(sa.text("SELECT id, binary_pk FROM ota_records")).all())
        states = dict(conn.execute(sa.text("SELECT id, state_version_number FROM devices")).all())
        count = conn.execute(sa.text("SELECT count(*) FROM ota_records")).scalar()
    # another partner's binary of that sha256 is not this record's; URLs that name no binary stay unlinked
    assert links == {1: 7, 2: None, 3: None, 4: None} and count == 4
    assert states == {1: 2 ** 63 - 1, 2: None, 3: None}
    with db.session() as s:
        rec = s.get(OtaRecord, 1)
        assert rec is not None and services.binary_of(s, rec).sha256 == sha
    db.dispose()
