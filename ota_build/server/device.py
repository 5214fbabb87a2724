"""The device API: is there an update, download it (HTTP Range), report state.

Authentication: ``Authorization: Bearer <device token>`` (``ota-build admin
device-token``); a token only works for its own deviceId.
"""

from __future__ import annotations

import re
from typing import Any, Tuple, Union

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from ota_build.server import services
from ota_build.server.auth import Principal, authenticate, require_device
from ota_build.server.models import Device
from ota_build.server.responses import RangeFileResponse

router = APIRouter(tags=["device"])
DeviceId = Path(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", description="deviceId")
STATES = ("downloading", "installing", "pending-reboot", "committing", "installed", "rolled-back", "failed", "rejected")


class StatusIn(BaseModel):
    """A device's report."""

    state: str = Field(..., pattern="^(" + "|".join(STATES) + ")$")
    versionNumber: Union[int, str] = Field("", description="integer, or a string of digits (as /update sends it)")

    @field_validator("versionNumber", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> str:
        text = str(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not re.fullmatch(r"[0-9]{0,19}", text) \
                or (text and int(text) >= 2 ** 63):
            raise ValueError("must be a versionNumber: an integer from 0 to 2^63-1 (or its digits as a string)")
        return text
    message: str = Field("", max_length=500)


def _device(request: Request, principal: Principal, device_id: str) -> Tuple[Any, Device]:
    require_device(principal, device_id)
    s = request.app.state.db.session()
    dev = s.get(Device, principal.device_pk)
    if dev is None:  # pragma: no cover - tokens cascade with the device
        s.close()
        raise HTTPException(404, "device not found")
    return s, dev


@router.get("/v1/devices/{deviceId}/update", responses={204: {"description": "no update"}})
def check_update(request: Request, deviceId: str = DeviceId, type: int = Query(5, ge=0, le=255),
                 versionNumber: int = Query(0, ge=0, le=2 ** 63 - 1),
                 principal: Principal = Depends(authenticate)) -> Response:
    """The newest image pushed to this device (or its group) above ``versionNumber``, else 204."""
    s, dev = _device(request, principal, deviceId)
    with s:
        found = services.update_for(s, dev, type, versionNumber)
        if found is None:
            return Response(status_code=204)
        img, rec, binary = found
        body = {"versionNumber": str(img.version_number), "version": rec.version, "imageId": str(img.id),
                "size": binary.size, "sha256": binary.sha256, "url": f"/v1/devices/{deviceId}/images/{img.id}"}
    return JSONResponse(body)


@router.head("/v1/devices/{deviceId}/images/{imageId}", response_class=Response, include_in_schema=False)  # curl -I
@router.get("/v1/devices/{deviceId}/images/{imageId}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "a range"}})
def download_image(request: Request, deviceId: str = DeviceId, imageId: int = Path(..., ge=1, le=2 ** 62),
                   principal: Principal = Depends(authenticate)) -> Response:
    """The hub_update.bin of an image pushed to this device; supports ``Range`` (206) to resume."""

    s, dev = _device(request, principal, deviceId)
    with s:
        binary = services.deployed_binary(s, dev, imageId)
        if binary is None:
            raise HTTPException(404, f"image {imageId} was not deployed to {deviceId}")
        sha = binary.sha256
    return RangeFileResponse(request.app.state.storage.blob_path(sha), media_type="application/octet-stream",
                             headers={"ETag": f'"{sha}"'})


@router.post("/v1/devices/{deviceId}/status", status_code=204)
def report_status(request: Request, body: StatusIn, deviceId: str = DeviceId,
                  principal: Principal = Depends(authenticate)) -> Response:
    """Store the device's last state (shown on the web page and in the partner's device list)."""
    text = str(body.versionNumber)  # the validator's digits ("" when the device sent none)
    s, dev = _device(request, principal, deviceId)
    with s:
        services.report_status(s, dev, body.state, int(text) if text else None, body.message)
    return Response(status_code=204)
