"""The index: patient, study, series, instance, and the pipeline's job, result and delivery rows.

Stages hand work to each other only through these rows and their ``state`` columns:
receive writes instances and marks series ``receiving``; schedule marks them ``complete`` and
creates ``jobs``; the worker turns jobs into ``results`` and ``deliveries``; export works the
deliveries. SQLite in WAL mode by default; any SQLAlchemy URL (PostgreSQL) for larger sites.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from dicom_ai.cache.states import DeliveryState, JobState, SeriesState


def utcnow() -> dt.datetime:
    """Timezone-naive UTC now (SQLite stores no zone)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


#: Keys, references and counts that may grow past 2**31: 64-bit everywhere. PostgreSQL's INTEGER
#: is 32-bit, so they are BIGINT there; SQLite's INTEGER already holds 64 bits, and only an
#: ``INTEGER PRIMARY KEY`` is its row id, so they stay INTEGER there.
ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {int: ID}  # every ``Mapped[int]`` without its own type


class Patient(Base):
    """A patient as the senders identify them (PS3.3 C.7.1.1 Patient Module). Rows are keyed on
    Patient ID (0010,0020), Issuer of Patient ID (0010,0021) and Patient's Name (0010,0010)
    together: two people sharing an ID (or both without one) stay two rows. Birth date and sex
    are kept to detect conflicts: a new study goes under a row with its key only when they
    agree too (:mod:`dicom_ai.cache.identity`), else under a new row. Values are stored
    normalised (:class:`~dicom_ai.cache.identity.PatientIdentity`)."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")  # DA, YYYYMMDD or ""
    sex: Mapped[str] = mapped_column(String(16), default="")  # M | F | O | ""
    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series as received. ``state``: receiving -> complete (jobs created)."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING, index=True)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    completion_signal: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Number of Series Related Instances (0020,1209) or Images in Acquisition (0020,1002)
    expected_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the association that last delivered instances of this series was released (A-RELEASE)
    released_association: Mapped[str | None] = mapped_column(String(32), nullable=True)
    released_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # the association (``<pid>-<n>@<host>``) that brought the newest instance, until it is
    # released or aborted: the idle timer waits while it is open
    receiving_association: Mapped[str | None] = mapped_column(String(300), nullable=True)
    routing_note: Mapped[str] = mapped_column(Text, default="")
    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    jobs: Mapped[list[Job]] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance; ``path`` is relative to ``data_dir``."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(400))
    size: Mapped[int] = mapped_column(ID)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    association: Mapped[str] = mapped_column(String(32), default="")  # which association brought it
    image_type: Mapped[str] = mapped_column(String(64), default="")  # Image Type (0008,0008), "\\"-joined
    orientation: Mapped[str] = mapped_column(String(8), default="")  # AXIAL | CORONAL | SAGITTAL | OBLIQUE
    slice_position: Mapped[float | None] = mapped_column(Float, nullable=True)  # mm along the normal
    slice_thickness: Mapped[float | None] = mapped_column(Float, nullable=True)  # mm
    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One model run on one series. ``state``: queued -> running -> done | failed (``reason``)."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    model_path: Mapped[str] = mapped_column(String(400))
    rule: Mapped[str] = mapped_column(String(64), default="")  # the routing rule that fired
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher runs first
    # names of the [[destinations]] its results go to; None = all of them
    destinations: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    findings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # clinician review (:class:`~dicom_ai.cache.states.ReviewState`): "" none asked, else
    # awaiting -> approved | rejected; while awaiting, the results' deliveries are held
    review: Mapped[str] = mapped_column(String(16), default="", server_default="", index=True)
    # the worker (:class:`Worker` name) that claimed it last, and its last sign of life while
    # running: a running job whose worker fell silent is requeued (``[worker] lost_after_seconds``)
    worker: Mapped[str] = mapped_column(String(128), default="", server_default="")
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # executor "celery": the queue it goes to ("" = the default one) and when it was handed to
    # the broker (None: not yet, or again after a requeue)
    queue: Mapped[str] = mapped_column(String(64), default="", server_default="")
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    series: Mapped[Series] = relationship(back_populates="jobs")
    results: Mapped[list[Result]] = relationship(back_populates="job")
    reviews: Mapped[list[Review]] = relationship(back_populates="job", order_by="Review.id")


class Result(Base):
    """A DICOM object produced by a job (SEG or SR); ``path`` is relative to ``data_dir``."""

    __tablename__ = "results"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    job: Mapped[Job] = relationship(back_populates="results")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="result")


class Delivery(Base):
    """One (result, destination) pair. ``state``: pending -> sending -> delivered, or back to
    pending (retry), or failed (a dead letter, after ``[delivery] horizon_hours``). ``sending`` is
    committed before the transfer starts, so a restart knows what may have arrived."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    result_fk: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_status: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    retry_since: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)  # horizon start
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # the node process sending it (host name, pid) and since when: set with ``sending``
    claimed_host: Mapped[str] = mapped_column(String(255), default="", server_default="")
    claimed_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    result: Mapped[Result] = relationship(back_populates="deliveries")


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return set_pragmas


#: SQLite ``synchronous`` settings :func:`make_engine` accepts (https://sqlite.org/pragma.html)
SYNCHRONOUS = ("FULL", "NORMAL")


def make_engine(url: str, synchronous: str = "FULL") -> Engine:
    """Create the engine; for SQLite: WAL, 30 s busy timeout, foreign keys, and ``synchronous``.

    ``FULL`` (the default) fsyncs the write-ahead log at every commit, so a committed
    transaction survives a power loss. ``NORMAL`` leaves that to the next checkpoint or to the
    next ``FULL`` commit of another connection: a commit survives a crash of the process but may
    be lost with the power. The receivers use it for their instance rows (see
    :func:`receiver_index`); every other writer uses ``FULL``. Other databases ignore it.

    Raises
    ------
    ValueError
        If ``synchronous`` is not one of :data:`SYNCHRONOUS`.
    """
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)  # e.g. `users add` before `serve`
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            json_serializer=json.dumps,
        )
        event.listen(engine, "connect", _sqlite_pragmas(synchronous))
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


class User(Base):
    """A person who may log in to the web pages: ``role`` reader (look) or admin (also act)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # carried in the session cookie and compared on every request: raising it (logout, a new
    # role or password) ends every session the user has open
    session_version: Mapped[int] = mapped_column(Integer, default=1)


class IdentityConflict(Base):
    """An instance refused because its patient attributes differ from those already stored for
    its study or series, or a re-sent SOP Instance UID whose content differs (kept for review)."""

    __tablename__ = "identity_conflicts"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # patient | study | resent
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")  # which attributes differ (no values)


class Counter(Base):
    """A monotonic count kept across processes (instances received, associations, ...)."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(ID, default=0)


class ModelVersion(Base):
    """A model package in the registry (``dicom-ai models add``): one row per name and version,
    at most one version of a name active (``dicom-ai models enable``)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(16))
    runtime: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(1024))  # the package folder the registry keeps
    sha256: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(1024), default="")  # where it was added from
    sample_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # run on the built-in sample
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    added_by: Mapped[str] = mapped_column(String(64), default="")


class ModelEvent(Base):
    """One change to the model registry: when, who, what (``dicom-ai models history``)."""

    __tablename__ = "model_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    who: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # add, remove, enable, disable, test
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class Worker(Base):
    """An inference worker process, as it last reported itself: registered when it starts, its
    ``heartbeat_at`` renewed every ``[worker] heartbeat_seconds`` with the job it is running
    (``job_fk``, None when idle), ``stopped_at`` set when it stops cleanly."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)  # unique per process run
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(default=0)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    device: Mapped[str] = mapped_column(String(16), default="")  # cpu | cuda
    job_fk: Mapped[int | None] = mapped_column(nullable=True)  # the job it is running
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Review(Base):
    """One clinician decision on a job's results, the audit trail of reviews: who (name and
    role), when, what (``approve`` or ``reject``) and the comment (``dicom-ai reviews list``)."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    who: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str] = mapped_column(String(16))  # approve | reject
    comment: Mapped[str] = mapped_column(Text, default="")
    job: Mapped[Job] = relationship(back_populates="reviews")


class IndexSchemaError(RuntimeError):
    """The index cannot be migrated to this version of dicom-ai's schema."""


MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"  # the schema as it was when migrations started
#: The newest revision of the migrations (tests/cache/test_migrations.py checks it is Alembic's
#: head). An index already there is opened without loading Alembic and its scripts.
HEAD = "0010"


def _alembic(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


#: PostgreSQL advisory lock key held while the schema is migrated (any constant unique to dicom-ai)
MIGRATION_LOCK = 0x6469636F6D6169  # "dicomai"


def migrate(engine: Engine) -> None:
    """Bring the index schema to this version of dicom-ai (Alembic ``upgrade head``).

    An index made before migrations existed (it has tables but no ``alembic_version``) is
    taken to be at the baseline and upgraded from there. On PostgreSQL the migration holds an
    advisory lock, so processes started together migrate one after the other. On SQLite a
    failed attempt is retried for 15 s, as another process may be migrating the same index at
    that moment (each CREATE TABLE commits on its own there).

    Raises
    ------
    IndexSchemaError
        If the upgrade fails (an index from an unknown version).
    """
    import time

    if _at_head(engine):
        return
    from alembic import command

    deadline = time.monotonic() + 15.0
    while True:
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # one migrating process at a time; the others then find the schema at head
                    # (the lock ends with the transaction)
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                insp = inspect(conn)
                if insp.has_table("series") and not insp.has_table("alembic_version"):
                    command.stamp(_alembic(conn), BASELINE)
                command.upgrade(_alembic(conn), "head")
            return
        except Exception as exc:  # noqa: BLE001 - whatever the database says, say where it came from
            # another process (the node and a CLI command started together) may be creating the
            # same new index: SQLite commits each CREATE TABLE, so wait for it to finish and look again
            if time.monotonic() > deadline:
                raise IndexSchemaError(
                    f"the index at {engine.url!r} cannot be brought to this version's schema: {exc}"
                ) from exc
            time.sleep(0.5)


def _at_head(engine: Engine) -> bool:
    """Whether the index's schema is at :data:`HEAD` already (one read; False when it has no
    schema yet or cannot be read, and the migration then says why)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    except Exception:  # noqa: BLE001 - no table yet, or another error the migration will report
        return False


def open_index(url: str) -> sessionmaker:
    """Open the index, creating or migrating its schema; returns a session factory.

    Raises
    ------
    IndexSchemaError
        If an existing index cannot be brought to this version's schema.
    """
    engine = make_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)


def receiver_index(url: str) -> sessionmaker:
    """The index as a C-STORE receiver writes it: an already migrated schema (the node migrates
    it at start, :func:`open_index`), and for SQLite commits that do not wait for the disk
    (``synchronous=NORMAL``, :func:`make_engine`).

    That keeps every acknowledged instance durable, because the receiver fsyncs the instance's
    file and its folder before the success status, and the node's start-up sweep
    (:func:`dicom_ai.cache.index.index_orphans`) indexes every instance file that has no row:
    an instance row that a power loss took is made again from the file. It takes the disk's
    flush out of the index transaction, which every receiver process and association waits for
    in turn.
    """
    return sessionmaker(make_engine(url, synchronous="NORMAL"), expire_on_commit=False)
