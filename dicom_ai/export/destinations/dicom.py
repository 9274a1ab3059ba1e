"""Destination kinds ``dicom`` (C-STORE to a configured AE) and ``return`` (C-STORE to the peer
that sent the study, by its ``[[peers]]`` entry): PS3.4 B (Storage Service Class), C.4.1 (the
C-FIND at IMAGE level that tells whether an instance arrived) and A.4 (C-ECHO)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dicom_ai.export import scu
from dicom_ai.export.destinations.base import DestinationHandler, Outcomes

if TYPE_CHECKING:
    from dicom_ai.cache.db import Result

#: (host, port, called AE title) of a DICOM destination.
Target = tuple[str, int, str]


class DicomHandler(DestinationHandler):
    """C-STORE to ``ae_title`` at ``host``:``port`` as the node's AE title, with the
    destination's ``timeout_seconds`` for the association and each DIMSE message."""

    kind = "dicom"

    def target(self, calling_ae_title: str) -> Target | str:
        """Where results of a study sent by ``calling_ae_title`` go, or why they cannot."""
        return self.dest.host, self.dest.port, self.dest.ae_title

    def send(self, files: dict[Path, str], calling_ae_title: str) -> Outcomes:
        """C-STORE ``files`` over one association (per 128 presentation contexts); a file the
        association ended before is ``not sent``."""
        target = self.target(calling_ae_title)
        if isinstance(target, str):
            return {f: (False, target) for f in files}
        host, port, aec = target
        try:
            outcomes = scu.store_files(list(files), host, port, aet=self.settings.node.ae_title, aec=aec,
                                       timeout=self.dest.timeout_seconds)
        except scu.AssociationFailed as exc:
            return {f: (False, str(exc)) for f in files}
        got = {o.path: (o.ok, o.message) for o in outcomes}
        return {f: got.get(f, (False, "not sent (association ended)")) for f in files}

    def arrived(self, result: Result) -> bool | None:
        """A Study Root C-FIND at IMAGE level for the result's SOP Instance UID."""
        series = result.job.series
        target = self.target(series.calling_ae_title)
        if isinstance(target, str):
            return None
        host, port, aec = target
        return scu.has_instance(host, port, aet=self.settings.node.ae_title, aec=aec,
                                study_uid=series.study.study_instance_uid,
                                series_uid=result.series_instance_uid, sop_uid=result.sop_instance_uid,
                                timeout=self.dest.timeout_seconds)

    def check(self, calling_ae_title: str = "") -> str:
        """C-ECHO; ``C-ECHO AE@host:port: 0x0000 Success``.

        Raises
        ------
        ConnectionError
            If there is no target (return to sender of an unknown peer), the association fails
            (:class:`~dicom_ai.export.scu.AssociationFailed`) or the status is not 0x0000.
        """
        target = self.target(calling_ae_title)
        if isinstance(target, str):
            raise ConnectionError(target)
        host, port, aec = target
        status = scu.echo(host, port, aet=self.settings.node.ae_title, aec=aec, timeout=self.dest.timeout_seconds)
        if status != 0:
            raise ConnectionError(f"C-ECHO {aec}@{host}:{port}: {scu.status_meaning(status)}")
        return f"C-ECHO {aec}@{host}:{port}: 0x0000 Success"

    def where(self) -> str:
        return f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}"


class ReturnHandler(DicomHandler):
    """C-STORE to the peer that sent the study: its ``[[peers]]`` entry by calling AE title,
    which must give a single host address and a port."""

    kind = "return"

    def target(self, calling_ae_title: str) -> Target | str:
        peer = next((p for p in self.settings.peers if p.ae_title == calling_ae_title), None)
        if peer is None:
            return f"return to sender: calling AE title {calling_ae_title!r} is not in [[peers]]"
        if peer.port is None or peer.host == "*" or "/" in peer.host:
            return (f"return to sender: [[peers]] {peer.ae_title} needs a single host address and a "
                    "port to be sent results")
        return peer.host, peer.port, peer.ae_title

    def where(self) -> str:
        return "the peer that sent the study"
