"""partner-ota-conf.json: the seed file as is, schema errors, secret precedence."""

from __future__ import annotations

import json

import pytest

from ota_build.core.config import load_config
from ota_build.core.errors import ConfigError
from ota_build.core.schema import jsonschema_available, load_schema, validate

from .conftest import assert_one_line_error, run_cli, write_config

BACKENDS = ["builtin"] + (["jsonschema"] if jsonschema_available() else [])


def test_seed_config_accepted_as_is(seed_config):
    cfg = load_config(str(seed_config), env={})
    assert cfg.name == "Potenco-test"
    assert cfg.version == "1.0"
    assert cfg.image_file == "hub_update.bin"
    assert cfg.ota_type == 5
    assert cfg.credentials.username == "john@company.io"
    assert cfg.credentials.password == "12334"


@pytest.mark.parametrize("slot", ["A", "a"])
def test_image_files_slot_a_either_case(tmp_path, slot):
    path = write_config(tmp_path, imageFiles={slot: "my_update.bin"})
    assert load_config(str(path), env={}).image_file == "my_update.bin"


BAD = [
    ({"name": None}, "field 'name': is missing"),
    ({"version": None}, "field 'version': is missing"),
    ({"name": 42}, "field 'name': must be of type string, got integer"),
    ({"name": "x" * 36}, "field 'name': is longer than 35 characters (got 36)"),
    ({"description": "d" * 501}, "field 'description': is longer than 500 characters (got 501)"),
    ({"tags": ["ok", "t" * 36]}, "field 'tags[1]': is longer than 35 characters (got 36)"),
    ({"tags": "release"}, "field 'tags': must be of type array, got string"),
    ({"imageFiles": {}}, "field 'imageFiles': must have at least 1 entry"),
    ({"imageFiles": {"A": "../etc/passwd"}}, "field 'imageFiles.A'"),
    ({"nmae": "typo"}, "field 'nmae': is not a known field"),
    ({"type": "5"}, "field 'type': must be of type integer, got string"),
    ({"version": ""}, "field 'version': must not be empty"),
    ({"partnerId": "../../x"}, "field 'partnerId': '../../x' does not match the pattern"),
    ({"partnerId": ".."}, "field 'partnerId': '..' does not match the pattern"),
    ({"deviceTypeId": "a b"}, "field 'deviceTypeId': 'a b' does not match the pattern"),
    ({"deviceTypeId": "x?y=1"}, "field 'deviceTypeId'"),
    ({"server": "ftp://ota"}, "field 'server'"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("changes,message", BAD, ids=[m for _, m in BAD])
def test_invalid_config_names_field(tmp_path, backend, changes, message):
    path = write_config(tmp_path, **changes)
    with pytest.raises(ConfigError) as exc:
        load_config(str(path), env={}, schema_backend=backend)
    assert str(exc.value).startswith(str(path) + ": ")
    assert message in str(exc.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", ["", "4f7de484-b438-578d-90a7-422104d5120i", "p-1a2b:dev_type.2~x"])
def test_ids_that_fit_a_url_path_segment(tmp_path, backend, value):
    """Empty (the layer's config: not known yet), the seed's ids, and what the server's admin accepts."""
    path = write_config(tmp_path, partnerId=value, deviceTypeId=value)
    cfg = load_config(str(path), env={}, schema_backend=backend)
    assert (cfg.partner_id, cfg.device_type_id) == (value, value)


def test_both_backends_agree_on_valid_documents(seed_config):
    schema = load_schema("partner-ota-conf")
    doc = json.loads(seed_config.read_text())
    for backend in BACKENDS:
        assert validate(schema, doc, backend=backend) is None


@pytest.mark.parametrize("changes,message", BAD[:5], ids=[m for _, m in BAD[:5]])
def test_cli_invalid_config_one_line_exit_2(tmp_path, changes, message):
    path = write_config(tmp_path, **changes)
    proc = run_cli("ota-build", "record", "-c", str(path), "-n", "1", "-s", cwd=tmp_path)
    assert_one_line_error(proc, 2, message, str(path))
    assert not (tmp_path / "full_ota_record.json").exists()


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",}')
    proc = run_cli("ota-build", "record", "-c", str(bad), "-n", "1", "-s", cwd=tmp_path)
    assert_one_line_error(proc, 2, "bad.json", "not valid JSON", "line 1")
    proc = run_cli("ota-build", "record", "-c", str(tmp_path / "nope.json"), "-n", "1", "-s", cwd=tmp_path)
    assert_one_line_error(proc, 2, "nope.json", "not found")


def test_secret_precedence_env_then_file_then_config(tmp_path):
    path = write_config(tmp_path)
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"username": "file-user", "userpw": "file-pw"}))
    creds.chmod(0o600)
    cfg = load_config(str(path), credentials_path=str(creds), env={"OTA_USERPW": "env-pw"})
    assert cfg.credentials.username == "file-user"       # file beats config
    assert cfg.credentials.password == "env-pw"          # env beats file
    assert cfg.credentials.auth_string.startswith("NGY3")  # config is the last resort
    cfg = load_config(str(path), env={"OTA_CREDENTIALS_FILE": str(creds)})
    assert cfg.credentials.username == "file-user"


def test_config_without_secrets_is_valid(tmp_path):
    path = write_config(tmp_path, username=None, userpw=None, auth_string=None)
    cfg = load_config(str(path), env={})
    assert cfg.credentials.missing() == ["username", "userpw", "auth-string"]
    with pytest.raises(ConfigError, match="field 'userpw'.*OTA_USERPW"):
        cfg.require("userpw")


def test_credentials_file_rejects_unknown_keys(tmp_path):
    path = write_config(tmp_path)
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"password": "x"}))
    with pytest.raises(ConfigError, match="field 'password': is not a known field"):
        load_config(str(path), credentials_path=str(creds), env={})


def test_secrets_not_in_repr(seed_config):
    cfg = load_config(str(seed_config), env={})
    assert "12334" not in repr(cfg)
    assert "NGY3" not in repr(cfg)


def _walk(schema):
    """Every sub-schema: properties' values, items and additionalProperties."""
    yield schema
    for sub in schema.get("properties", {}).values():
        yield from _walk(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk(schema[key])


def test_packaged_schemas_use_only_keywords_the_builtin_validator_knows():
    """The build-time fallback must understand every schema we ship (checked, not assumed)."""
    from importlib import resources

    from ota_build.core.schema import SUPPORTED_KEYWORDS

    names = [p.name[: -len(".schema.json")] for p in resources.files("ota_build.core").joinpath("schemas").iterdir()
             if p.name.endswith(".schema.json")]
    assert {"partner-ota-conf", "full_ota_record", "ota-agent"} <= set(names)
    for name in names:
        schema = load_schema(name)
        for node in _walk(schema):
            assert set(node) <= SUPPORTED_KEYWORDS, (name, set(node) - SUPPORTED_KEYWORDS)
