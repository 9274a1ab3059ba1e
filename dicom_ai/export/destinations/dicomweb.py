"""Destination kind ``stow``: DICOMweb STOW-RS to ``url`` (PS3.18 10.5), QIDO-RS to tell what
arrived and to check the server answers (PS3.18 10.6), optional HTTP basic authentication
(:mod:`dicom_ai.export.stow`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dicom_ai.export import stow
from dicom_ai.export.destinations.base import DestinationHandler, Outcomes

if TYPE_CHECKING:
    from dicom_ai.cache.db import Result


class StowHandler(DestinationHandler):
    """A DICOMweb server at the destination's ``url`` (the service root)."""

    kind = "stow"

    def send(self, files: dict[Path, str], calling_ae_title: str) -> Outcomes:
        """One STOW-RS request with every file; an unreachable server fails them all."""
        assert self.dest.url is not None  # Destination refuses kind stow without one
        try:
            return stow.stow(self.dest.url, files, username=self.dest.username, password=self.dest.password,
                             timeout=self.dest.timeout_seconds)
        except stow.DicomWebError as exc:
            return {f: (False, str(exc)) for f in files}

    def arrived(self, result: Result) -> bool | None:
        """A QIDO-RS instance query by SOP Instance UID."""
        assert self.dest.url is not None
        return stow.has_instance(self.dest.url, result.sop_instance_uid, username=self.dest.username,
                                 password=self.dest.password, timeout=self.dest.timeout_seconds)

    def check(self, calling_ae_title: str = "") -> str:
        """A QIDO-RS study query; ``QIDO-RS <url>: HTTP 200``.

        Raises
        ------
        ConnectionError
            :class:`~dicom_ai.export.stow.DicomWebError` if the server is unreachable or answers
            with an error.
        """
        assert self.dest.url is not None
        return f"QIDO-RS {self.dest.url}: {stow.check(self.dest.url, username=self.dest.username, password=self.dest.password)}"

    def where(self) -> str:
        return str(self.dest.url)
