"""JSON Schema validation of ota_build's JSON inputs, with one-line errors.

The schemas ship inside the package (``ota_build/core/schemas``). Validation uses
the ``jsonschema`` package when it is importable. Inside a BitBake build
``jsonschema`` is not available without rust-native (its native recipe pulls
``rpds-py``), so a small validator for exactly the keywords our schemas use
takes over there; both produce the same messages, and the test-suite runs
every case through both (see docs/decisions.md, "Schema validation in the
build").
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence, Type

from ota_build.core.errors import UsageError

JSON = Any

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}

SUPPORTED_KEYWORDS = frozenset(
    {
        "$schema", "$id", "title", "description", "type", "required", "properties",
        "additionalProperties", "minProperties", "items", "minItems", "minLength", "maxLength",
        "pattern", "minimum", "maximum", "enum",
    }
)


def load_schema(name: str) -> Dict[str, JSON]:
    """Return the packaged schema ``ota_build/core/schemas/<name>.schema.json``."""
    text = resources.files("ota_build.core").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


def _type_name(value: JSON) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    for name, typ in _TYPES.items():
        if isinstance(value, typ):
            return name
    return type(value).__name__


def _is_type(value: JSON, expected: str) -> bool:
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[expected])


def _field(path: Sequence[Any]) -> str:
    if not path:
        return "(top level)"
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_error(path: Sequence[Any], keyword: str, expected: JSON, instance: JSON,
                 missing: Optional[str] = None, extra: Optional[str] = None) -> str:
    """Render one validation failure as ``field 'x': problem``."""
    if keyword == "required":
        return f"field '{_field(list(path) + [missing])}': is missing"
    if keyword == "additionalProperties":
        return f"field '{_field(list(path) + [extra])}': is not a known field"
    where = f"field '{_field(path)}'"
    if keyword == "type":
        return f"{where}: must be of type {expected}, got {_type_name(instance)}"
    if keyword == "maxLength":
        return f"{where}: is longer than {expected} characters (got {len(instance)})"
    if keyword == "minLength":
        if expected == 1:
            return f"{where}: must not be empty"
        return f"{where}: is shorter than {expected} characters (got {len(instance)})"
    if keyword == "pattern":
        return f"{where}: {instance!r} does not match the pattern {expected}"
    if keyword == "minimum":
        return f"{where}: must be at least {expected} (got {instance})"
    if keyword == "maximum":
        return f"{where}: must be at most {expected} (got {instance})"
    if keyword == "minProperties":
        return f"{where}: must have at least {expected} entr{'y' if expected == 1 else 'ies'}"
    if keyword == "minItems":
        return f"{where}: must have at least {expected} item{'' if expected == 1 else 's'}"
    if keyword == "enum":
        return f"{where}: must be one of {', '.join(map(repr, expected))} (got {instance!r})"
    return f"{where}: fails '{keyword}'"


def pattern_matches(pattern: str, value: str) -> bool:
    r"""JSON Schema's ``pattern`` (ECMA-262: a search, where ``$`` is the end of the string).

    Python's ``$`` also matches before a trailing newline, so ``"1.0\n"`` would pass ``^[0-9.]+$``;
    here every unescaped ``$`` outside a character class means the end of the string (``\Z``)."""
    return re.search(_ecma_anchors(pattern), value) is not None


def _ecma_anchors(pattern: str) -> str:
    out, escaped, in_class = [], False, False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        elif ch == "$" and not in_class:
            out.append("\\Z")
            continue
        out.append(ch)
    return "".join(out)


def _validate_builtin(schema: Dict[str, JSON], instance: JSON, path: List[Any]) -> Optional[str]:
    """Validate ``instance`` against the keyword subset in SUPPORTED_KEYWORDS."""
    unknown = set(schema) - SUPPORTED_KEYWORDS
    if unknown:  # a schema change the fallback cannot honour must not pass silently
        raise RuntimeError(f"built-in validator does not support {sorted(unknown)}")
    expected_type = schema.get("type")
    if expected_type is not None and not _is_type(instance, expected_type):
        return format_error(path, "type", expected_type, instance)
    if "enum" in schema and instance not in schema["enum"]:
        return format_error(path, "enum", schema["enum"], instance)
    if isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            return format_error(path, "minLength", schema["minLength"], instance)
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            return format_error(path, "maxLength", schema["maxLength"], instance)
        if "pattern" in schema and not pattern_matches(schema["pattern"], instance):
            return format_error(path, "pattern", schema["pattern"], instance)
    if _is_type(instance, "number"):
        if "minimum" in schema and instance < schema["minimum"]:
            return format_error(path, "minimum", schema["minimum"], instance)
        if "maximum" in schema and instance > schema["maximum"]:
            return format_error(path, "maximum", schema["maximum"], instance)
    if isinstance(instance, dict):
        for name in schema.get("required", []):
            if name not in instance:
                return format_error(path, "required", None, instance, missing=name)
        if "minProperties" in schema and len(instance) < schema["minProperties"]:
            return format_error(path, "minProperties", schema["minProperties"], instance)
        props = schema.get("properties", {})
        additional = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                err = _validate_builtin(props[key], value, path + [key])
            elif additional is False:
                err = format_error(path, "additionalProperties", None, instance, extra=key)
            elif isinstance(additional, dict):
                err = _validate_builtin(additional, value, path + [key])
            else:
                err = None
            if err:
                return err
    if isinstance(instance, list) and len(instance) < schema.get("minItems", 0):
        return format_error(path, "minItems", schema["minItems"], instance)
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            err = _validate_builtin(schema["items"], item, path + [index])
            if err:
                return err
    return None


def _validate_jsonschema(schema: Dict[str, JSON], instance: JSON) -> Optional[str]:
    """Validate with the ``jsonschema`` package (authoritative when present).

    The message is rendered by the built-in walker so both back-ends report the
    same first error in the same words; jsonschema's own message is the last resort.
    """
    import jsonschema  # optional dependency; absent in the BitBake build

    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(instance))
    if error is None:  # jsonschema's ``pattern`` is Python's re.search, whose ``$`` passes "x\n": ECMA's here
        return _validate_builtin(schema, instance, [])
    message = _validate_builtin(schema, instance, [])
    if message:
        return message
    return f"field '{_field(list(error.absolute_path))}': {error.message}"


def jsonschema_available() -> bool:
    """True when the ``jsonschema`` package can be imported."""
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return False
    return True


def validate(schema: Dict[str, JSON], instance: JSON, backend: Optional[str] = None) -> Optional[str]:
    """Return ``None`` if ``instance`` is valid, else a one-line message.

    ``backend`` is ``"jsonschema"``, ``"builtin"`` or ``None`` (jsonschema when
    importable, else builtin).
    """
    if backend is None:
        backend = "jsonschema" if jsonschema_available() else "builtin"
    if backend == "jsonschema":
        return _validate_jsonschema(schema, instance)
    if backend == "builtin":
        return _validate_builtin(schema, instance, [])
    raise ValueError(f"unknown schema backend {backend!r}")


def parse_json_file(path: str) -> JSON:
    """Read and parse a JSON file.

    Raises ``OSError`` when it cannot be read and ``ValueError`` with a message
    naming the file, line and column when it is not JSON.
    """
    with open(path, "r", encoding="utf-8") as fh:
        text = fh.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def load_validated(path: str, schema_name: str, what: str, error: Type[UsageError] = UsageError,
                   backend: Optional[str] = None) -> JSON:
    """Read ``path`` and validate it against the packaged schema ``schema_name``.

    Every failure raises ``error`` with one line naming the file (and the
    field): missing file, unreadable file, bad JSON, schema violation.
    """
    try:
        doc = parse_json_file(path)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    except ValueError as exc:
        raise error(str(exc)) from None
    problem = validate(load_schema(schema_name), doc, backend=backend)
    if problem:
        raise error(f"{path}: {problem}")
    return doc
