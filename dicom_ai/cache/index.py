"""Writing received instances into the index (patient, study, series, instance rows).

An instance is stored under one patient, study and series, and stays there (DICOM PS3.3
C.7.1.1 Patient Module, C.7.2.1 General Study Module, C.7.3.1 General Series Module):

* its patient attributes (:mod:`dicom_ai.cache.identity`) must agree with the patient already
  stored for its study or series;
* its Series Instance UID must not be stored under another Study Instance UID;
* its SOP Instance UID, if already stored, must be in the same series. Sent again with the same
  data set it changes nothing; with another data set it is kept or replaced as ``[node]
  resent_instance`` says.

An instance breaking the first three is refused (the receiver answers 0xA900, PS3.4 B.2.3) and
recorded as an :class:`~dicom_ai.cache.db.IdentityConflict`. The checks run in the index
transaction, with the write lock held, where the file, written under a temporary name first, is
renamed into place only when they pass: a refused instance touches nothing stored, and two
receiver processes racing with conflicting instances cannot both get in.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pydicom
from sqlalchemy import Engine, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Counter, IdentityConflict, Instance, Patient, Series, Study, utcnow
from dicom_ai.cache.identity import PatientIdentity
from dicom_ai.cache.prepared import Prepared
from dicom_ai.cache.states import SeriesState
from dicom_ai.cache.store import TMP_PREFIX, FileStore, Pending, Staged, check_uid, same_dataset
from dicom_ai.dicom.header import instance_facts, int_value, text_value
from dicom_ai.lifetime import this_host

log = logging.getLogger(__name__)

T = TypeVar("T")
_write_lock = threading.Lock()  # one writer per process: SQLite serialises writers anyway


@dataclass(frozen=True)
class InstanceMeta:
    """The attributes the index keeps of a received instance (all strings DICOM-decoded)."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    accession_number: str
    study_description: str
    series_uid: str
    modality: str
    body_part: str
    series_description: str
    series_number: int | None
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    association: str = ""  # an id unique to the association that brought the instance
    image_type: str = ""
    orientation: str = ""  # AXIAL | CORONAL | SAGITTAL | OBLIQUE | "" (no Image Orientation)
    slice_position: float | None = None  # mm, Image Position (Patient) along the slice normal
    slice_thickness: float | None = None  # mm
    expected_instances: int | None = None  # instances of the series, when the data set says
    issuer_of_patient_id: str = ""  # Issuer of Patient ID (0010,0021)
    patient_birth_date: str = ""  # Patient's Birth Date (0010,0030)
    patient_sex: str = ""  # Patient's Sex (0010,0040)

    def identity(self) -> PatientIdentity:
        """The normalised patient attributes, cut to the widths of the ``patients`` columns."""
        i = PatientIdentity.of(self.patient_id, self.issuer_of_patient_id, self.patient_name,
                               self.patient_birth_date, self.patient_sex)
        return PatientIdentity(i.patient_id[:64], i.issuer[:64], i.name[:324], i.birth_date[:8], i.sex[:16])


def _text(ds: pydicom.Dataset, keyword: str, limit: int = 64) -> str:
    return text_value(ds, keyword)[:limit]


def instance_meta(ds: pydicom.Dataset, transfer_syntax: str, association: str = "") -> InstanceMeta:
    """The :class:`InstanceMeta` of a data set (received, or read back from a stored file).

    Raises
    ------
    InvalidUID
        If the Study, Series or SOP Instance UID is not a valid UI value (PS3.5 9.1).
    """
    return InstanceMeta(
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName", 324),
        study_uid=check_uid(_text(ds, "StudyInstanceUID", 200), "Study Instance UID"),
        study_date=_text(ds, "StudyDate", 8),
        accession_number=_text(ds, "AccessionNumber", 16),
        study_description=_text(ds, "StudyDescription"),
        series_uid=check_uid(_text(ds, "SeriesInstanceUID", 200), "Series Instance UID"),
        modality=_text(ds, "Modality", 16),
        body_part=_text(ds, "BodyPartExamined", 64).upper(),
        series_description=_text(ds, "SeriesDescription"),
        series_number=int_value(ds, "SeriesNumber"),
        sop_class_uid=_text(ds, "SOPClassUID").strip(),
        sop_instance_uid=check_uid(_text(ds, "SOPInstanceUID", 200), "SOP Instance UID"),
        instance_number=int_value(ds, "InstanceNumber"),
        transfer_syntax_uid=str(transfer_syntax),
        association=association,
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_birth_date=_text(ds, "PatientBirthDate", 16),
        patient_sex=_text(ds, "PatientSex", 16),
        **instance_facts(ds),
    )


# -- identity checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    """Why an instance cannot be stored where it says it belongs. ``kind``: ``patient`` (its
    patient attributes differ from its study's patient), ``study`` (its series is stored under
    another study) or ``resent`` (its SOP Instance UID is stored in another series, or, not
    refused, was sent again with another data set). ``detail`` names attributes, never values."""

    kind: str
    detail: str


class IdentityRefused(Exception):
    """The index transaction found a :class:`Conflict` (nothing was written)."""

    def __init__(self, conflict: Conflict) -> None:
        super().__init__(conflict.detail)
        self.conflict = conflict


class AlreadyStored(Exception):
    """The SOP Instance UID is already indexed in this series (at ``path``), and the caller did
    not ask to replace it (nothing was written)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


_PATIENT_COLUMNS = (
    Patient.id.label("patient_pk"),
    Patient.patient_id,
    Patient.issuer_of_patient_id,
    Patient.patient_name,
    Patient.birth_date,
    Patient.sex,
)
_SERIES_ROW = Prepared(
    select(Series.id, Series.state, Study.study_instance_uid, *_PATIENT_COLUMNS)
    .join_from(Series, Study, Series.study_fk == Study.id)
    .join_from(Study, Patient, Study.patient_fk == Patient.id)
    .where(Series.series_instance_uid == bindparam("series_uid"))
)
_STUDY_ROW = Prepared(
    select(Study.id, *_PATIENT_COLUMNS)
    .join_from(Study, Patient, Study.patient_fk == Patient.id)
    .where(Study.study_instance_uid == bindparam("study_uid"))
)
_INSTANCE_ROW = Prepared(
    select(Instance.path, Series.series_instance_uid, Study.study_instance_uid)
    .join_from(Instance, Series, Instance.series_fk == Series.id)
    .join_from(Series, Study, Series.study_fk == Study.id)
    .where(Instance.sop_instance_uid == bindparam("uid"))
)
_PATIENTS_KEYED = select(*_PATIENT_COLUMNS).where(
    Patient.patient_id == bindparam("patient_id"),
    Patient.issuer_of_patient_id == bindparam("issuer"),
    Patient.patient_name == bindparam("name"),
).order_by(Patient.id)
_COMPLETE_PATIENT = Prepared(
    update(Patient)
    .where(Patient.id == bindparam("patient_pk"))
    .values(birth_date=bindparam("birth_date"), sex=bindparam("sex"))
)


def _stored_identity(row: Any) -> PatientIdentity:
    return PatientIdentity.of(row.patient_id, row.issuer_of_patient_id, row.patient_name,
                              row.birth_date, row.sex)


@dataclass
class _Found:
    """What the index holds for an instance: its series, study and patient rows where they
    exist, the stored path of its SOP Instance UID in the same series, or a conflict."""

    conflict: Conflict | None = None
    series_id: int | None = None
    study_id: int | None = None
    patient_pk: int | None = None
    stored: PatientIdentity | None = None  # the patient of the study, when it exists
    instance_path: str | None = None
    series_state: str = SeriesState.RECEIVING  # of the stored series (a new one is receiving)


def _examine(conn: Any, meta: InstanceMeta, identity: PatientIdentity) -> _Found:
    """The rule of the module docstring, read on ``conn``: the series, else the study, fixes
    the patient ``identity`` is compared with; then where the SOP Instance UID is stored."""
    params = {"series_uid": meta.series_uid, "study_uid": meta.study_uid, "uid": meta.sop_instance_uid}
    found = _Found()
    row = _SERIES_ROW.first(conn, params)
    if row is not None:
        if row.study_instance_uid != meta.study_uid:
            found.conflict = Conflict(
                "study", "SeriesInstanceUID is stored under another StudyInstanceUID")
            return found
        found.series_id, found.series_state = row.id, row.state
    else:
        row = _STUDY_ROW.first(conn, params)
        if row is not None:
            found.study_id = row.id
    if row is not None:
        found.patient_pk, found.stored = row.patient_pk, _stored_identity(row)
        differing = found.stored.differing(identity)
        if differing:
            found.conflict = Conflict(
                "patient", f"{', '.join(differing)} {'differs' if len(differing) == 1 else 'differ'}"
                " from the patient stored for the study")
            return found
    inst = _INSTANCE_ROW.first(conn, params)
    if inst is not None:
        if inst.series_instance_uid != meta.series_uid:
            moved = inst.study_instance_uid != meta.study_uid
            found.conflict = Conflict(
                "resent", "SOPInstanceUID is stored in another series ("
                + ("StudyInstanceUID, SeriesInstanceUID differ" if moved else "SeriesInstanceUID differs")
                + "); refused")
            return found
        found.instance_path = inst.path
    return found


def check_instance(sessions: sessionmaker, meta: InstanceMeta) -> tuple[Conflict | None, str | None]:
    """Look, without writing, at what the index holds for ``meta`` (see the module docstring).

    Returns ``(conflict, stored_path)``: the :class:`Conflict` that refuses it, or None; and
    the path of its SOP Instance UID when already stored in the same series (a re-send), or None.
    """
    engine = sessions.kw["bind"]
    with engine.connect() as conn:
        found = _examine(conn, meta, meta.identity())
    return found.conflict, found.instance_path


def _patient_for_new_study(conn: Any, identity: PatientIdentity) -> tuple[int, PatientIdentity | None]:
    """The patient row a new study goes under: one with the same Patient ID, Issuer and Name
    whose Birth Date and Sex agree, else a new one. Returns (row id, its stored identity or
    None when new)."""
    keys = {"patient_id": identity.patient_id, "issuer": identity.issuer, "name": identity.name}
    for row in conn.execute(_PATIENTS_KEYED, keys):
        stored = _stored_identity(row)
        if not stored.differing(identity):
            return row.patient_pk, stored
    pk = conn.execute(
        insert(Patient).values(
            patient_id=identity.patient_id, issuer_of_patient_id=identity.issuer,
            patient_name=identity.name, birth_date=identity.birth_date, sex=identity.sex,
        )
    ).inserted_primary_key[0]
    return pk, None


def _create_series(conn: Any, meta: InstanceMeta, identity: PatientIdentity, found: _Found,
                   calling_ae: str) -> int:
    if found.study_id is None:
        found.patient_pk, found.stored = _patient_for_new_study(conn, identity)
        found.study_id = conn.execute(
            insert(Study).values(
                study_instance_uid=meta.study_uid, patient_fk=found.patient_pk,
                study_date=meta.study_date, accession_number=meta.accession_number,
                description=meta.study_description,
            )
        ).inserted_primary_key[0]
    return conn.execute(
        insert(Series).values(
            series_instance_uid=meta.series_uid, study_fk=found.study_id, modality=meta.modality,
            body_part=meta.body_part, description=meta.series_description,
            series_number=meta.series_number, calling_ae_title=calling_ae,
        )
    ).inserted_primary_key[0]


# Built once: the per-instance path runs these on every C-STORE, and building statements costs
# more than running them. The instance row's columns, bound to index_instance's parameters:
_INSTANCE_VALUES: dict[str, Any] = {
    column: bindparam(param)
    for column, param in {
        "series_fk": "series_id",
        "sop_class_uid": "sop_class_uid",
        "instance_number": "instance_number",
        "transfer_syntax_uid": "transfer_syntax_uid",
        "path": "path",
        "size": "size",
        "received_at": "now",
        "association": "association",
        "image_type": "image_type",
        "orientation": "orientation",
        "slice_position": "slice_position",
        "slice_thickness": "slice_thickness",
    }.items()
}
_UPDATE_INSTANCE = Prepared(
    update(Instance).where(Instance.sop_instance_uid == bindparam("uid")).values(**_INSTANCE_VALUES)
)
_INSERT_INSTANCE = Prepared(
    cast(Table, Instance.__table__).insert().values(sop_instance_uid=bindparam("uid"), **_INSTANCE_VALUES)
)
_REOPEN_SERIES = Prepared(
    update(Series)
    .where(Series.id == bindparam("series_id"), Series.state != SeriesState.RECEIVING)
    .values(state=SeriesState.RECEIVING, completion_signal=None, released_association=None, released_at=None)
)
_TOUCH_SERIES = Prepared(
    update(Series)
    .where(Series.id == bindparam("series_id"))
    .values(
        last_received_at=bindparam("now"),
        receiving_association=bindparam("receiving"),
        expected_instances=func.coalesce(bindparam("expected"), Series.expected_instances),
    )
)


def index_instance(
    sessions: sessionmaker,
    meta: InstanceMeta,
    relpath: str,
    size: int,
    calling_ae: str,
    *,
    replace: bool = True,
    staged: Staged | None = None,
) -> bool:
    """Insert or update the rows of one stored instance and touch its series.

    In one transaction, which first takes the write lock (so no other receiver process writes
    in between): the identity checks of the module docstring; the patient, study and series
    rows when new; the instance row; and, when ``staged`` is given, the rename of the written
    file into place (fsync'd after the commit). A series already processed goes back to
    ``receiving`` (a late or replaced instance), so the scheduler looks at it again. Returns True
    when the instance was new.

    An unknown Birth Date or Sex of the stored patient is completed from the instance.

    Parameters
    ----------
    replace:
        What to do when the SOP Instance UID is already indexed in this series: update its row
        (True), or raise :class:`AlreadyStored` (False).
    staged:
        The instance's file, written but not yet in place (:meth:`FileStore.stage`).

    Raises
    ------
    IdentityRefused
        If the instance conflicts with what is stored (nothing is written).
    AlreadyStored
        See ``replace``.
    """
    params = {
        "uid": meta.sop_instance_uid,
        "series_uid": meta.series_uid,
        "sop_class_uid": meta.sop_class_uid,
        "instance_number": meta.instance_number,
        "transfer_syntax_uid": meta.transfer_syntax_uid,
        "path": relpath,
        "size": size,
        "now": utcnow(),
        "association": meta.association,
        "image_type": meta.image_type,
        "orientation": meta.orientation,
        "slice_position": meta.slice_position,
        "slice_thickness": meta.slice_thickness,
        "expected": meta.expected_instances,
        "receiving": sending_association(meta.association),
    }
    engine = sessions.kw["bind"]
    new = _twice(lambda: _index_once(engine, meta, calling_ae, params, replace, staged))
    if staged is not None:
        staged.sync()
    return new


def _twice(write: Callable[[], T]) -> T:
    """Run a write transaction, and once more if another receiver process inserted the same
    patient, study, series, instance or counter between our look-up and our insert (the second
    pass finds its rows)."""
    try:
        return write()
    except IntegrityError:
        return write()


def _index_once(engine: Engine, meta: InstanceMeta, calling_ae: str, params: dict, replace: bool,
                staged: Staged | None) -> bool:
    identity = meta.identity()
    with _write_lock:
        try:
            with engine.begin() as conn:
                # a write first: SQLite takes its write lock here, so what is read below is what
                # the commit is checked against
                _count(conn, "instances_received")
                found = _examine(conn, meta, identity)
                if found.conflict is not None:
                    raise IdentityRefused(found.conflict)
                new = found.instance_path is None
                if not new and not replace:
                    assert found.instance_path is not None  # not new
                    raise AlreadyStored(found.instance_path)
                if found.series_id is None:  # first instance of the series: create its rows
                    found.series_id = _create_series(conn, meta, identity, found, calling_ae)
                if found.stored is not None and found.stored.completed_by(identity) != found.stored:
                    done = found.stored.completed_by(identity)
                    _COMPLETE_PATIENT.execute(conn, {"patient_pk": found.patient_pk,
                                                      "birth_date": done.birth_date, "sex": done.sex})
                params["series_id"] = found.series_id
                if new:
                    _INSERT_INSTANCE.execute(conn, params)
                else:
                    _UPDATE_INSTANCE.execute(conn, params)
                # a late or replaced instance re-opens its series
                if (new or staged is not None) and found.series_state != SeriesState.RECEIVING:
                    _REOPEN_SERIES.execute(conn, params)
                _TOUCH_SERIES.execute(conn, params)
                if staged is not None:
                    staged.place()
        except BaseException as exc:
            if staged is None or not staged.placed:
                raise  # nothing on disk changed
            if new:  # the commit failed: no row names the file, so it goes
                staged.dest.unlink(missing_ok=True)
            raise RuntimeError(f"index commit failed after {staged.dest.name} was placed: {exc}") from exc
    return new


# -- receiving: the checks, the write, the re-sends ---------------------------------------------


@dataclass(frozen=True)
class Stored:
    """What :func:`store_instance` did. ``outcome``:

    * ``new``: stored and indexed;
    * ``identical``: the SOP Instance UID was stored with the same data set; nothing changed;
    * ``restored``: it was indexed but its file was missing; the file is written again;
    * ``kept_first``: stored with another data set, which was kept (``resent_instance =
      "keep_first"``); ``conflict`` recorded;
    * ``replaced``: stored with another data set, now replaced (``"replace"``); ``conflict``
      recorded;
    * ``refused``: ``conflict`` says why; nothing was written.
    """

    outcome: str
    conflict: Conflict | None = None


def store_instance(
    sessions: sessionmaker,
    store: FileStore,
    meta: InstanceMeta,
    relpath: str,
    data: bytes | memoryview,
    calling_ae: str,
    resent: str = "keep_first",
    pending: Pending | None = None,
) -> Stored:
    """Check, write and index one received instance (see the module docstring).

    The file is written under a temporary name first (``pending``, when the receiver started
    writing it already: :meth:`FileStore.write_ahead`). The index transaction
    (:func:`index_instance`) makes the identity checks with the write lock held and renames the
    file into place only when they pass; a refused instance's temporary file is removed, so
    nothing stored changes. A SOP Instance UID already stored in the series is compared with
    the stored file and kept, or replaced, as ``resent`` says. A conflict is recorded as an
    :class:`~dicom_ai.cache.db.IdentityConflict` row and counted (``identity_conflicts_<kind>``).

    Parameters
    ----------
    resent:
        ``[node] resent_instance``: ``keep_first`` or ``replace``, for a SOP Instance UID stored
        in the same series with another data set. Either way the stored copy is never moved to
        another patient, study or series.
    pending:
        ``data`` written ahead, used for the first write; whoever wrote it discards it
        (:meth:`Pending.discard`), which removes it if it was not used.

    Raises
    ------
    OSError
        If the file cannot be written (nothing is left behind).
    """
    conflict: Conflict | None = None
    existing: str | None = None  # the stored path of this SOP Instance UID in its series
    # each pass learns at most one new fact (a conflict, or the stored copy), and a race with
    # another receiver can change the answer once more
    for _attempt in range(4):
        if conflict is not None:
            record_conflict(sessions, conflict, meta, calling_ae)
            return Stored("refused", conflict)
        replacing, outcome = False, "new"
        if existing is not None:
            if not store.abspath(existing).is_file():
                replacing, outcome = True, "restored"
            elif same_dataset(store.abspath(existing), data):
                return Stored("identical")
            elif resent == "keep_first":
                conflict = Conflict("resent", "SOPInstanceUID sent again with another data set; first copy kept")
                record_conflict(sessions, conflict, meta, calling_ae)
                return Stored("kept_first", conflict)
            else:
                replacing, outcome = True, "replaced"
        if pending is not None and not pending.used:
            staged = pending.staged(store.abspath(relpath))
        else:
            staged = store.stage(relpath, data)
        try:
            index_instance(sessions, meta, relpath, staged.size, calling_ae, replace=replacing, staged=staged)
        except IdentityRefused as exc:
            conflict = exc.conflict
            continue
        except AlreadyStored as exc:  # this SOP Instance UID is indexed in the series already
            existing = exc.path
            continue
        finally:
            staged.discard()
        if existing is not None and existing != relpath:
            store.abspath(existing).unlink(missing_ok=True)  # its row now names relpath
        if outcome == "replaced":
            done = Conflict("resent", "SOPInstanceUID sent again with another data set; replaced")
            record_conflict(sessions, done, meta, calling_ae)
            return Stored("replaced", done)
        return Stored(outcome)
    raise RuntimeError(f"{meta.sop_instance_uid}: the index kept changing while it was stored")


_INSERT_CONFLICT = cast(Table, IdentityConflict.__table__).insert().values(
    at=bindparam("at"), kind=bindparam("kind"), calling_ae_title=bindparam("calling_ae"),
    sop_instance_uid=bindparam("sop"), study_instance_uid=bindparam("study"),
    series_instance_uid=bindparam("series"), detail=bindparam("detail"),
)


def record_conflict(sessions: sessionmaker, conflict: Conflict, meta: InstanceMeta, calling_ae: str) -> None:
    """Add an :class:`~dicom_ai.cache.db.IdentityConflict` row (UIDs and attribute keywords,
    no patient data) and count it in ``identity_conflicts_<kind>``."""
    engine = sessions.kw["bind"]
    row = {"at": utcnow(), "kind": conflict.kind, "calling_ae": calling_ae[:16],
           "sop": meta.sop_instance_uid, "study": meta.study_uid, "series": meta.series_uid,
           "detail": conflict.detail}

    def write() -> None:
        with _write_lock, engine.begin() as conn:
            _count(conn, f"identity_conflicts_{conflict.kind}")
            conn.execute(_INSERT_CONFLICT, row)

    _twice(write)


# -- start-up: files written but never indexed ----------------------------------------------------


_INDEXED_PER_SERIES = (
    select(Study.study_instance_uid, Series.series_instance_uid, func.count(Instance.id))
    .join_from(Instance, Series, Instance.series_fk == Series.id)
    .join_from(Series, Study, Series.study_fk == Study.id)
    .group_by(Series.id, Study.study_instance_uid, Series.series_instance_uid)
)
_INDEXED_PATHS = select(Instance.path).where(Instance.sop_instance_uid.in_(bindparam("uids", expanding=True)))


def index_orphans(sessions: sessionmaker, store: FileStore) -> tuple[int, int]:
    """Index the instance files that were written but never indexed (a crash between the
    rename and the index commit); returns (indexed, removed).

    An orphan's sender never got a success response, so it may send it again; indexing it
    through the same checks as a received instance (:func:`check_instance`,
    :func:`index_instance`) keeps it either way. A file that cannot be read as DICOM, lies
    under a path its UIDs do not give, or that the checks refuse is removed, as the receiver
    would have refused it, with one log line (UIDs only) and, for a conflict, an
    :class:`~dicom_ai.cache.db.IdentityConflict` row.

    Fast for a large store: one walk of the ``instances`` folders (names only, no stat) and one
    grouped query; only a folder holding more files than the index has instances for its
    series is looked at file by file.
    """
    engine = sessions.kw["bind"]
    with engine.connect() as conn:
        indexed = {f"instances/{study}/{series}": n for study, series, n in conn.execute(_INDEXED_PER_SERIES)}
    top = store.abspath("instances")
    counts = [0, 0]
    for folder, _dirs, files in os.walk(top):
        names = [f for f in files if f.endswith(".dcm") and not f.startswith(TMP_PREFIX)]
        if not names:
            continue
        rel = Path(folder).relative_to(store.root).as_posix()
        if len(names) <= indexed.get(rel, 0):
            continue
        uids = [n[: -len(".dcm")] for n in names]
        with engine.connect() as conn:
            known = {p for k in range(0, len(uids), 500)
                     for p in conn.scalars(_INDEXED_PATHS, {"uids": uids[k:k + 500]})}
        for name in names:
            relpath = f"{rel}/{name}"
            if relpath not in known:
                counts[0 if _index_orphan(sessions, store, relpath) else 1] += 1
    return counts[0], counts[1]


def _index_orphan(sessions: sessionmaker, store: FileStore, relpath: str) -> bool:
    """Index one orphan file, or remove it; True when indexed."""
    path = store.abspath(relpath)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = instance_meta(ds, str(ds.file_meta.get("TransferSyntaxUID", "")))
        if store.instance_relpath(meta.study_uid, meta.series_uid, meta.sop_instance_uid) != relpath:
            raise ValueError("its UIDs give another path")
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is unusable
        meta, reason = None, f"not an instance this node can index ({type(exc).__name__}: {exc})"
    if meta is not None:
        conflict, _existing = check_instance(sessions, meta)
        try:
            if conflict is None:
                index_instance(sessions, meta, relpath, path.stat().st_size, "", replace=False)
                log.info("orphan instance file %s indexed", relpath)
                return True
        except IdentityRefused as exc:
            conflict = exc.conflict
        except AlreadyStored:
            return True  # indexed meanwhile (another process started on the same store)
        record_conflict(sessions, conflict, meta, "")
        reason = f"{conflict.kind} conflict: {conflict.detail}"
    path.unlink(missing_ok=True)
    log.warning("orphan instance file %s removed: %s", relpath, reason)
    return False


# -- counters, releases ---------------------------------------------------------------------------


_COUNT = Prepared(update(Counter).where(Counter.name == bindparam("counter")).values(value=Counter.value + 1))


def _count(conn: Any, name: str) -> None:
    if _COUNT.execute(conn, {"counter": name}) == 0:
        conn.execute(cast(Table, Counter.__table__).insert().values(name=name, value=1))


def count(sessions: sessionmaker, name: str) -> None:
    """Add one to the counter ``name`` (shared by every process through the index)."""
    engine = sessions.kw["bind"]

    def write() -> None:
        with _write_lock, engine.begin() as conn:
            _count(conn, name)

    _twice(write)


def sending_association(association: str) -> str | None:
    """How a series names the association of this process (``<pid>-<n>``) that is sending it:
    ``<pid>-<n>@<host>`` (None for no association: an instance indexed by the start-up sweep)."""
    return f"{association}@{this_host()}" if association else None


def association_process(name: str) -> tuple[str, int] | None:
    """(host, pid) of the receiving process named in a :func:`sending_association` value."""
    association, _, host = name.rpartition("@")
    pid = association.partition("-")[0]
    return (host, int(pid)) if host and pid.isdigit() else None


def mark_released(sessions: sessionmaker, association: str, series_uids: list[str]) -> None:
    """Record that ``association``, which brought instances of ``series_uids``, was released;
    the series it was still sending are no longer being sent."""
    now = utcnow()
    with _write_lock, sessions.begin() as session:
        session.execute(
            update(Series)
            .where(Series.series_instance_uid.in_(series_uids), Series.state == SeriesState.RECEIVING)
            .values(released_association=association, released_at=now)
            .execution_options(synchronize_session=False)
        )
        _no_longer_sending(session, association, series_uids)


def mark_aborted(sessions: sessionmaker, association: str, series_uids: list[str]) -> None:
    """Record that ``association``, which brought instances of ``series_uids``, was aborted (an
    abort says nothing about completeness: only that it sends no more)."""
    with _write_lock, sessions.begin() as session:
        _no_longer_sending(session, association, series_uids)


def _no_longer_sending(session: Any, association: str, series_uids: list[str]) -> None:
    session.execute(
        update(Series)
        .where(Series.series_instance_uid.in_(series_uids),
               Series.receiving_association == sending_association(association))
        .values(receiving_association=None)
        .execution_options(synchronize_session=False)
    )
