"""Seed 002's HTTP API (the original ``aabadie/ota-server``'s, for its ``client/publish.py``): HTTP in and out only.

* ``POST /publish``: multipart parts ``manifest``, ``slot0``, ``slot1`` and form field ``publish_id``.
* ``PUT /notify``: form fields ``publish_id`` and ``device_urls`` (comma-separated ``host[:port]/path``).

Both need a partner token (Bearer, or HTTP Basic with user ``token``). The rules live in
``server.publications``, the CoAP in ``server.coap``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ota_build.server.auth import Principal, authenticate_or_basic, require_partner
from ota_build.server.coap import notify_devices_blocking
from ota_build.server.publications import PARTS, Publications, check_publish_id, notification_payload, resolve_device
from ota_build.server.services import Kind, ServiceError

log = logging.getLogger(__name__)
router = APIRouter(tags=["CoAP/SUIT publishing (seed 002)"])
CHUNK = 1 << 20
#: devices one PUT /notify may name (each is a concurrent CoAP exchange)
MAX_DEVICES = 1000


def _chunks(upload: Any, limit: int, name: str) -> Iterator[bytes]:
    size = 0
    while True:
        chunk = upload.file.read(CHUNK)
        if not chunk:
            return
        size += len(chunk)
        if size > limit:
            raise ServiceError(Kind.TOO_LARGE, f"{name}: larger than the server's limit of {limit} bytes")
        yield chunk


def _publications(request: Request) -> Publications:
    return Publications(request.app.state.settings.data_dir)


def _binary(description: str) -> Dict[str, str]:
    return {"type": "string", "format": "binary", "description": description}


_PUBLISH_ID = {"type": "string", "description": "the publication's name: one path component (no '/', '.' or '..')"}
#: the bodies in the OpenAPI description only: the forms are parsed in the handlers (after the request guard and
#: the token), so a missing part is the original's 400 naming every missing one, not a 422
_PUBLISH_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["publish_id", *PARTS],
    "properties": {"publish_id": _PUBLISH_ID, "manifest": _binary("the (SUIT) manifest"),
                   "slot0": _binary("the firmware image for slot 0"),
                   "slot1": _binary("the firmware image for slot 1")}}}}}}
_NOTIFY_SCHEMA = {"type": "object", "required": ["publish_id", "device_urls"],
                  "properties": {"publish_id": _PUBLISH_ID,
                                 "device_urls": {"type": "string", "description": "comma-separated host[:port]/path "
                                                 "of the devices' CoAP notify resources", "example": "[fd00::2]/notify"}}}
_NOTIFY_BODY = {"requestBody": {"required": True, "content": {
    "application/x-www-form-urlencoded": {"schema": _NOTIFY_SCHEMA},
    "multipart/form-data": {"schema": _NOTIFY_SCHEMA}}}}


@router.post("/publish", openapi_extra=_PUBLISH_BODY)
async def publish(request: Request, principal: Principal = Depends(authenticate_or_basic)) -> JSONResponse:
    """Store a manifest and two slots under ``publish_id``; they are served over CoAP at once."""
    require_partner(principal)
    form = await request.form()
    missing = [name for name in PARTS if not hasattr(form.get(name), "file")]
    if missing:
        raise ServiceError(Kind.INVALID, "Missing " + ", ".join(missing) + (" files" if len(missing) > 1 else " file"))
    value = form.get("publish_id")
    publish_id = check_publish_id(value if isinstance(value, str) else None)
    limit = request.app.state.settings.max_upload_bytes
    parts = {name: _chunks(form[name], limit, name) for name in PARTS}
    pub = await run_in_threadpool(_publications(request).publish, publish_id, principal.partner_id, parts)
    settings = request.app.state.settings
    base = f"coap://[{settings.coap_host}]:{settings.coap_port}/{publish_id}"
    return JSONResponse({"publishId": publish_id, "sizes": pub.sizes, "created": pub.created,
                         "urls": {name: f"{base}/{name}" for name in PARTS}})


@router.put("/notify", openapi_extra=_NOTIFY_BODY)
async def notify(request: Request, principal: Principal = Depends(authenticate_or_basic)) -> JSONResponse:
    """Send each device a CoAP PUT with the manifest's URL; answer 200 with each device's outcome."""
    require_partner(principal)
    form = await request.form()
    publish_value, urls_value = form.get("publish_id"), form.get("device_urls")
    missing = [n for n, v in (("publish_id", publish_value), ("device_urls", urls_value)) if not isinstance(v, str) or not v]
    if missing:
        raise ServiceError(Kind.INVALID, "Missing " + " and ".join(missing))
    publish_id = check_publish_id(str(publish_value))
    pubs = _publications(request)
    if pubs.meta(publish_id) is None:
        raise ServiceError(Kind.NOT_FOUND, f"publish_id '{publish_id}' is not published")
    pubs.check_owner(publish_id, principal.partner_id)
    settings = request.app.state.settings
    devices = [u.strip() for u in str(urls_value).split(",") if u.strip()]
    if not devices:
        raise ServiceError(Kind.INVALID, "device_urls: no device url")
    if len(devices) > MAX_DEVICES:
        raise ServiceError(Kind.INVALID, f"device_urls: {len(devices)} devices, at most {MAX_DEVICES} per request")
    uris: List[str] = [await run_in_threadpool(resolve_device, u, settings.coap_notify_allow) for u in devices]
    payload = notification_payload(settings.coap_host, settings.coap_port, publish_id)
    results = await run_in_threadpool(notify_devices_blocking, uris, payload, settings.coap_notify_timeout)
    for i, result in enumerate(results):
        result["device"] = devices[i]
    log.info("notified %s: %s", publish_id, [(r["device"], r["outcome"]) for r in results])
    doc: Dict[str, Any] = {"publishId": publish_id, "payload": payload.decode("ascii"), "devices": results}
    return JSONResponse(doc)
