"""Destination kinds, one handler class per ``[[destinations]]`` ``kind`` (:data:`HANDLERS`):

* ``dicom``: :class:`~dicom_ai.export.destinations.dicom.DicomHandler`, C-STORE to an AE;
* ``return``: :class:`~dicom_ai.export.destinations.dicom.ReturnHandler`, C-STORE to the peer
  that sent the study;
* ``folder``: :class:`~dicom_ai.export.destinations.folder.FolderHandler`, files in a folder;
* ``stow``: :class:`~dicom_ai.export.destinations.dicomweb.StowHandler`, DICOMweb STOW-RS
  (PS3.18 10.5).

Each sends, tells whether an instance arrived, and checks that its destination answers
(:class:`~dicom_ai.export.destinations.base.DestinationHandler`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicom_ai.export.destinations.base import DestinationHandler, Outcomes
from dicom_ai.export.destinations.dicom import DicomHandler, ReturnHandler
from dicom_ai.export.destinations.dicomweb import StowHandler
from dicom_ai.export.destinations.folder import FolderHandler

if TYPE_CHECKING:
    from dicom_ai.config import Destination, Settings

__all__ = ["HANDLERS", "DestinationHandler", "Outcomes", "handler_for"]

#: ``[[destinations]]`` ``kind`` -> its handler class.
HANDLERS: dict[str, type[DestinationHandler]] = {
    cls.kind: cls for cls in (DicomHandler, ReturnHandler, FolderHandler, StowHandler)
}


def handler_for(dest: Destination, settings: Settings) -> DestinationHandler:
    """The handler of a configured destination.

    Raises
    ------
    ValueError
        If no handler is registered for its ``kind`` (the settings allow only the four above).
    """
    cls = HANDLERS.get(dest.kind)
    if cls is None:
        raise ValueError(f"destination {dest.name!r}: no handler for kind {dest.kind!r}")
    return cls(dest, settings)
