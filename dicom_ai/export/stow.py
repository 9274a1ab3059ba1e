"""DICOMweb client for result delivery: STOW-RS, and QIDO-RS to check what arrived.

PS3.18 10.5 (STOW-RS: ``POST {root}/studies`` with ``multipart/related; type="application/dicom"``,
response a JSON data set with Referenced SOP Sequence (0008,1199) and Failed SOP Sequence
(0008,1198)) and 10.6 (QIDO-RS: ``GET {root}/instances?SOPInstanceUID=...``).

Requests go through ``dicomweb_client.DICOMwebClient`` on a ``requests`` session: one request
per batch with a ``Content-Length`` (no chunked upload, which some servers refuse) and no
retries of its own (the outbox retries, with backoff); ``timeout`` for connecting and for each
read, s; optional HTTP basic authentication; ``https`` server certificates checked against the
system's trust store (``ssl.create_default_context``, where a site adds its own CA) as well as
the certificates ``requests`` ships.
"""

from __future__ import annotations

import json
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from requests.adapters import HTTPAdapter

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


class DicomWebError(ConnectionError):
    """The DICOMweb server could not be reached or answered with an HTTP error."""


class _SystemTrust(HTTPAdapter):
    """HTTPS with the system's trust store (``ssl.create_default_context``) besides the CA
    bundle ``requests`` passes."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("ssl_context", ssl.create_default_context())
        super().init_poolmanager(*args, **kwargs)


def _reason(exc: BaseException) -> str:
    """The innermost cause of a ``requests`` error: ``[Errno 111] Connection refused``,
    ``timed out``, a certificate failure."""
    for _ in range(16):
        candidates = (getattr(exc, "reason", None), exc.__cause__, exc.args[0] if exc.args else None,
                      exc.__context__)
        inner = next((e for e in candidates if isinstance(e, BaseException) and e is not exc), None)
        if inner is None:
            break
        exc = inner
    return str(exc) or type(exc).__name__


class _Client:
    """A :class:`DICOMwebClient` for the service root ``root``, keeping the last HTTP response
    it got (errors included) for its status and body."""

    def __init__(self, root: str, username: str | None, password: str | None, timeout: float) -> None:
        self.root = root.rstrip("/")
        session = requests.Session()
        session.mount("https://", _SystemTrust())
        if username is not None:
            session.auth = (username, password or "")
        self.response: requests.Response | None = None
        self.web = DICOMwebClient(self.root, session=session, timeout=timeout, chunk_size=sys.maxsize,
                                  headers={"Accept": "application/dicom+json"}, callback=self._keep)
        self.web.set_http_retry_params(retry=False)

    def _keep(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        self.response = response
        return response

    def call(self, request: Callable[[DICOMwebClient], Any], path: str) -> tuple[int, bytes, Any]:
        """Run ``request(client)``; (HTTP status, body, what the client made of it: None when it
        refused the status or the body).

        Raises
        ------
        DicomWebError
            If the server cannot be reached (refused, timed out, TLS failure).
        """
        value = None
        try:
            value = request(self.web)
        except requests.HTTPError:
            pass  # an HTTP error status: the caller reads it
        except requests.RequestException as exc:
            raise DicomWebError(f"{self.root}{path}: {_reason(exc)}") from None
        except Exception:  # noqa: BLE001 - the client could not parse a body; the caller reads it
            if self.response is None:
                raise
        if self.response is None:
            raise DicomWebError(f"{self.root}{path}: no response")
        return self.response.status_code, self.response.content, value


def stow(root: str, files: dict[Path, str], *, username: str | None = None,
         password: str | None = None, timeout: float = 30.0) -> dict[Path, tuple[bool, str]]:
    """Store ``files`` with one STOW-RS request (PS3.18 10.5).

    Parameters
    ----------
    root:
        The DICOMweb service root, e.g. ``http://pacs:8042/dicom-web``.
    files:
        DICOM files (PS3.10) -> their SOP Instance UIDs.
    username, password:
        HTTP basic authentication; none without ``username``.
    timeout:
        For connecting and for each read, s.

    Returns
    -------
    dict[Path, tuple[bool, str]]
        (stored, message) per file: HTTP 200 stores all; 202 and 409 name the failed instances
        in Failed SOP Sequence (PS3.18 Table 10.5.3-1), ``HTTP 409, failure reason 0xA700``.

    Raises
    ------
    DicomWebError
        If the server cannot be reached.
    OSError, pydicom.errors.InvalidDicomError
        If a file cannot be read as DICOM.
    """
    datasets = [pydicom.dcmread(path) for path in files]
    client = _Client(root, username, password, timeout)
    status, body, _ = client.call(lambda web: web.store_instances(datasets), "/studies")
    failed: dict[str, str] = {}
    stored: set[str] = set()
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
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
    """QIDO-RS (PS3.18 10.6): whether the server holds the instance ``sop_uid``.

    Returns
    -------
    bool or None
        True or False (HTTP 204 or an empty answer), None when it cannot say (unreachable, an
        HTTP error, a body that is not DICOM JSON).
    """
    client = _Client(root, username, password, timeout)
    try:
        status, _, found = client.call(
            lambda web: web.search_for_instances(search_filters={"SOPInstanceUID": sop_uid}), "/instances")
    except DicomWebError:
        return None
    if status == 204:
        return False
    if status != 200 or found is None:
        return None
    return bool(found)


def check(root: str, *, username: str | None = None, password: str | None = None,
          timeout: float = 10.0) -> str:
    """A QIDO-RS study query (``{root}/studies?limit=1``); returns ``HTTP <status>``.

    Raises
    ------
    DicomWebError
        If the server is unreachable or answers with a status other than 200 or 204.
    """
    client = _Client(root, username, password, timeout)
    status, body, _ = client.call(lambda web: web.search_for_studies(limit=1), "/studies")
    if status not in (200, 204):
        raise DicomWebError(f"HTTP {status} {body[:120].decode(errors='replace')}")
    return f"HTTP {status}"
