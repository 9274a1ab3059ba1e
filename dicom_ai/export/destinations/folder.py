"""Destination kind ``folder``: each result copied atomically to ``<path>/<SOP Instance UID>.dcm``
(a DICOM file, PS3.10)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dicom_ai.cache.store import atomic_copy
from dicom_ai.export.destinations.base import DestinationHandler, Outcomes

if TYPE_CHECKING:
    from dicom_ai.cache.db import Result


class FolderHandler(DestinationHandler):
    """Files in the destination's ``path``, named by SOP Instance UID."""

    kind = "folder"

    @property
    def path(self) -> Path:
        """The destination folder."""
        assert self.dest.path is not None  # Destination refuses kind folder without one
        return Path(self.dest.path)

    def send(self, files: dict[Path, str], calling_ae_title: str) -> Outcomes:
        """Copy each file (written to a temporary name, then renamed); ``copy failed: ...`` with
        the ``OSError`` when one cannot be."""
        out = {}
        for f, sop_uid in files.items():
            try:
                atomic_copy(f, self.path / f"{sop_uid}.dcm")
                out[f] = (True, "copied")
            except OSError as exc:
                out[f] = (False, f"copy failed: {exc}")
        return out

    def arrived(self, result: Result) -> bool | None:
        """Whether ``<SOP Instance UID>.dcm`` is in the folder."""
        return (self.path / f"{result.sop_instance_uid}.dcm").is_file()

    def check(self, calling_ae_title: str = "") -> str:
        """Create the folder if needed and write and remove a probe file in it.

        Raises
        ------
        OSError
            If the folder cannot be created or written.
        """
        path = self.path
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dicom-ai-check"
        probe.write_bytes(b"")
        probe.unlink()
        return f"folder {path} is writable"

    def where(self) -> str:
        return str(self.dest.path)
