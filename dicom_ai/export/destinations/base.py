"""The interface of a destination kind: send results, ask whether one arrived, check the
destination answers.

One handler class per ``[[destinations]]`` ``kind`` (:attr:`DestinationHandler.kind`), built
for one configured destination; :func:`dicom_ai.export.destinations.handler_for` picks it.
Handlers never raise for a failed transfer: they say per file whether it was stored and why
not, and the outbox (:mod:`dicom_ai.export.outbox`) records it and retries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from dicom_ai.cache.db import Result
    from dicom_ai.config import Destination, Settings

#: Per file sent: (stored, message); the message is a status to keep, e.g. ``0x0000 Success``.
Outcomes = dict[Path, tuple[bool, str]]


class DestinationHandler(ABC):
    """A configured destination of one kind.

    Parameters
    ----------
    dest:
        Its ``[[destinations]]`` entry.
    settings:
        The node's settings (its AE title, the ``[[peers]]`` for return to sender).
    """

    kind: ClassVar[str] = ""

    def __init__(self, dest: Destination, settings: Settings) -> None:
        self.dest = dest
        self.settings = settings

    @abstractmethod
    def send(self, files: dict[Path, str], calling_ae_title: str) -> Outcomes:
        """Send ``files`` (path -> SOP Instance UID) in one association or request.

        Parameters
        ----------
        files:
            Result files and their SOP Instance UIDs.
        calling_ae_title:
            AE title of the peer that sent the study the results are of.

        Returns
        -------
        Outcomes
            (stored, message) for every file of ``files``.
        """

    @abstractmethod
    def arrived(self, result: Result) -> bool | None:
        """Whether a result's instance is at the destination; None when that cannot be asked
        (no query service, unreachable)."""

    @abstractmethod
    def check(self, calling_ae_title: str = "") -> str:
        """Verify that the destination answers; returns what answered.

        Raises
        ------
        ConnectionError
            If it does not answer, or answers with a failure (``OSError`` for a folder).
        """

    @abstractmethod
    def where(self) -> str:
        """Where it sends, in a few words (``STORE_SCP@pacs:104``, a folder, a URL)."""
