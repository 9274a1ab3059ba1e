"""DICOMweb client for result delivery: STOW-RS, and QIDO-RS to check what arrived.

PS3.18 10.5 (STOW-RS: ``POST {root}/studies`` with ``multipart/related; type="application/dicom"``,
response a JSON data set with Referenced SOP Sequence (0008,1199) and Failed SOP Sequence
(0008,1198)) and 10.6 (QIDO-RS: ``GET {root}/instances?SOPInstanceUID=...``). Plain standard
library HTTP: one request per batch, optional basic authentication.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


class DicomWebError(ConnectionError):
    """The DICOMweb server could not be reached or answered with an HTTP error."""


def _request(url: str, *, username: str | None, password: str | None, timeout: float,
             data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}),
                                 method="POST" if data is not None else "GET")
    if username is not None:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DicomWebError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def stow(root: str, files: dict[Path, str], *, username: str | None = None,
         password: str | None = None, timeout: float = 30.0) -> dict[Path, tuple[bool, str]]:
    """Store ``files`` (path -> SOP Instance UID) with one STOW-RS request.

    Returns (stored, message) per file. HTTP 200 stores all; 202 and 409 name the failed
    instances in Failed SOP Sequence (PS3.18 Table 10.5.3-1). Raises :class:`DicomWebError`
    when the server cannot be reached.
    """
    boundary = f"dicom-ai-{uuid.uuid4().hex}"
    parts = []
    for path in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts.append(Path(path).read_bytes())
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    status, body = _request(
        root.rstrip("/") + "/studies", username=username, password=password, timeout=timeout,
        data=b"".join(parts),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"},
    )
    failed: dict[str, str] = {}
    stored: set[str] = set()
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        answer = {}
    for item in (answer.get(FAILED_SOP_SEQUENCE) or {}).get("Value", []):
        uid = ((item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [""])[0]
        reason = ((item.get(FAILURE_REASON) or {}).get("Value") or [None])[0]
        failed[uid] = f"failure reason 0x{reason:04X}" if isinstance(reason, int) else "failed"
    for item in (answer.get(REFERENCED_SOP_SEQUENCE) or {}).get("Value", []):
        stored.add(((item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [""])[0])
    out = {}
    for path, uid in files.items():
        if status == 200 or (status == 202 and uid in stored):
            out[path] = (True, f"HTTP {status}")
        elif uid in failed:
            out[path] = (False, f"HTTP {status}, {failed[uid]}")
        else:
            out[path] = (False, f"HTTP {status} {body[:120].decode(errors='replace')}".strip())
    return out


def has_instance(root: str, sop_uid: str, *, username: str | None = None,
                 password: str | None = None, timeout: float = 10.0) -> bool | None:
    """QIDO-RS: whether the server holds the instance; None when it cannot say."""
    query = urllib.parse.urlencode({"SOPInstanceUID": sop_uid})
    try:
        status, body = _request(f"{root.rstrip('/')}/instances?{query}", username=username,
                                password=password, timeout=timeout,
                                headers={"Accept": "application/dicom+json"})
    except DicomWebError:
        return None
    if status == 204:
        return False
    if status != 200:
        return None
    try:
        return bool(json.loads(body or b"[]"))
    except ValueError:
        return None


def check(root: str, *, username: str | None = None, password: str | None = None,
          timeout: float = 10.0) -> str:
    """A QIDO-RS study query; returns ``HTTP <status>``. Raises :class:`DicomWebError` when the
    server is unreachable or answers with an error."""
    status, body = _request(f"{root.rstrip('/')}/studies?limit=1", username=username,
                            password=password, timeout=timeout,
                            headers={"Accept": "application/dicom+json"})
    if status not in (200, 204):
        raise DicomWebError(f"HTTP {status} {body[:120].decode(errors='replace')}")
    return f"HTTP {status}"
