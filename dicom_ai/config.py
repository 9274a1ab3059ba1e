"""The node's configuration: one settings object.

Sources, later ones winning:

1. the defaults in this module;
2. a TOML file (``dicom-ai serve --config FILE``; ``config/dicom-ai.toml`` is the commented default);
3. environment variables ``DICOM_AI_<SECTION>__<KEY>``, e.g. ``DICOM_AI_NODE__PORT=11113`` or
   ``DICOM_AI_COMPLETION__STABLE_SECONDS=5``. List sections (``peers``, ``destinations``) take
   JSON: ``DICOM_AI_PEERS='[{"ae_title": "CT1", "host": "10.0.0.5"}]'``.

A bad file or value raises :class:`ConfigError` whose message names the key, e.g.
``node.port: Input should be less than or equal to 65535``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # PS3.5 6.2 AE: 16 chars, no backslash


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeSettings(_Section):
    """``[node]``: this Application Entity."""

    ae_title: str = Field("DICOM_AI", pattern=AE_TITLE_PATTERN)
    port: int = Field(11112, ge=1, le=65535)
    bind_address: str = "0.0.0.0"
    data_dir: Path = Path("var")
    database_url: str | None = None  # default: sqlite:///<data_dir>/index.sqlite
    # who runs the jobs: "local", the node's own worker process (no broker); "celery", workers
    # started with `dicom-ai worker` on this or other hosts, reached through [celery] broker_url
    executor: Literal["local", "celery"] = "local"
    max_pdu: int = Field(131072, ge=0)  # bytes; 0 = unlimited
    acse_timeout: float = 30.0  # s
    dimse_timeout: float = 60.0  # s
    network_timeout: float = 60.0  # s
    # s a connection may take to send its A-ASSOCIATE-RQ (TLS handshake included) before it is
    # dropped; waiting connections hold no association slot and no thread
    association_request_timeout: float = Field(10.0, gt=0)
    # open associations of the whole node (all receiver processes together; counted in shared
    # memory, not split), and of those from any one remote address; over either: A-ASSOCIATE-RJ
    # transient, local limit exceeded (PS3.8 9.3.4)
    max_associations: int = Field(64, ge=1)
    max_associations_per_address: int = Field(24, ge=1)
    require_called_ae_title: bool = True  # refuse associations addressed to another AE title
    # the largest data set one C-STORE may bring, counted as it arrives and again after a
    # deflated transfer syntax is inflated; larger ones are answered 0xA700 (MiB)
    max_instance_mb: int = Field(512, ge=1)
    min_free_mb: int = Field(500, ge=0)  # below this free space in data_dir: refuse with 0xA700
    # a SOP Instance UID received again, in the same series, with other content: keep the
    # first copy and answer success (a retry after a lost response must not loop) or replace it
    resent_instance: Literal["keep_first", "replace"] = "keep_first"
    # processes accepting associations on the one port (each runs its own C-STORE handlers,
    # all share the index); 0 = one per CPU core, at most 4
    receivers: int = Field(0, ge=0, le=32)

    def receiver_count(self) -> int:
        """The number of receiver processes ``receivers`` asks for (0 resolved to the cores)."""
        return self.receivers or max(1, min(4, os.cpu_count() or 1))

    @field_validator("ae_title")
    @classmethod
    def _strip(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("AE title must not be blank")
        return v.strip()


class Peer(_Section):
    """``[[peers]]``: a remote AE allowed to open associations (and to be returned results).

    ``host`` is an address or a network in CIDR notation (``10.0.0.0/24``); ``"*"`` for any.
    ``port`` is only needed when results are returned to this peer.
    """

    ae_title: str = Field(pattern=AE_TITLE_PATTERN)
    host: str = "*"
    port: int | None = Field(None, ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _valid_host(cls, v: str) -> str:
        if v != "*":
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP address or CIDR network: {v!r}") from exc
        return v

    def allows(self, ae_title: str, address: str) -> bool:
        """True when the calling AE title and the peer's IP address match this entry."""
        if ae_title.strip() != self.ae_title.strip():
            return False
        if self.host == "*":
            return True
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return False


class TLSSettings(_Section):
    """``[tls]``: DICOM TLS (PS3.15 B.1 / BCP 195) on the SCP port; TLS 1.2 or newer."""

    enabled: bool = False
    certificate: Path | None = None  # our certificate chain, PEM
    private_key: Path | None = None  # its private key, PEM, unencrypted
    ca_certificates: Path | None = None  # CA bundle (PEM) that peers' certificates must chain to
    require_peer_certificate: bool = True  # refuse peers without a valid certificate

    @model_validator(mode="after")
    def _complete(self) -> TLSSettings:
        if self.enabled:
            missing = [k for k in ("certificate", "private_key") if getattr(self, k) is None]
            if self.require_peer_certificate and self.ca_certificates is None:
                missing.append("ca_certificates")
            if missing:
                raise ValueError(f"TLS enabled but {', '.join(missing)} not set")
        return self


class CompletionSettings(_Section):
    """``[completion]``: when a series counts as complete (the first signal that fires wins).

    1. the expected count: as many instances as Number of Series Related Instances (0020,1209)
       or Images in Acquisition (0020,1002) announce;
    2. association release: the association that brought the whole series was released
       ``release_grace_seconds`` ago, nothing arrived since, its Instance Numbers are contiguous
       and its slices evenly spaced;
    3. the idle timer: nothing arrived for ``stable_seconds``, and the association that brought
       the newest instance is no longer open (or that instance is ``open_association_max_seconds``
       old).
    """

    stable_seconds: float = Field(10.0, gt=0)  # no new instance for this long -> complete
    # the idle timer waits while the association still sending the series is open, this long
    # at most after its newest instance (a sender hung with the association open), s
    open_association_max_seconds: float = Field(300.0, gt=0)
    release_grace_seconds: float = Field(1.0, ge=0)  # wait after A-RELEASE for a next association
    use_expected_count: bool = True
    use_association_release: bool = True
    check_interval_seconds: float = Field(0.25, gt=0)


class Destination(_Section):
    """``[[destinations]]``: where results go.

    ``kind``: ``dicom`` (C-STORE to ``ae_title`` at ``host``:``port``), ``return`` (C-STORE to
    the peer that sent the study: its ``[[peers]]`` entry by calling AE title, which must give a
    single ``host`` and a ``port``), ``folder`` (files named ``<SOP Instance UID>.dcm`` in
    ``path``) or ``stow`` (DICOMweb STOW-RS to ``url``, PS3.18 10.5, optional HTTP basic auth).
    """

    name: str
    kind: Literal["dicom", "return", "folder", "stow"] = "dicom"
    ae_title: str = Field("ANY-SCP", pattern=AE_TITLE_PATTERN)
    host: str = "127.0.0.1"
    port: int = Field(104, ge=1, le=65535)
    path: Path | None = None  # for kind = "folder"
    url: str | None = None  # for kind = "stow": the DICOMweb root, e.g. http://pacs:8042/dicom-web
    username: str | None = None  # for kind = "stow"
    password: str | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    omit_empty_frames: bool = True  # SEG option; some viewers need every frame
    # which results this destination gets: "seg", "sr" and "sc" (Secondary Capture images with
    # the segments burned in, for archives and viewers that cannot show SEG)
    results: list[Literal["seg", "sr", "sc"]] = Field(default=["seg", "sr"], min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == "folder" and self.path is None:
            raise ValueError(f"destination {self.name!r}: kind folder needs path")
        if self.kind == "stow" and not self.url:
            raise ValueError(f"destination {self.name!r}: kind stow needs url")
        return self


class DeliverySettings(_Section):
    """``[delivery]``: retries of result delivery."""

    retry_initial_seconds: float = Field(30.0, gt=0)  # first retry after this long, doubling
    retry_max_seconds: float = Field(3600.0, gt=0)  # never longer than this between tries
    horizon_hours: float = Field(24.0, gt=0)  # then the delivery is a dead letter (state failed)
    # a delivery a node on another host (sharing the index) has been sending for longer than
    # this is taken as left by a node that died: looked up at the destination, sent again if
    # missing (one on this host is settled as soon as its process has ended)
    sending_lost_after_seconds: float = Field(3600.0, gt=0)


class RetentionSettings(_Section):
    """``[retention]``: when old series leave the cache (never one with work pending)."""

    max_age_days: float = Field(30.0, ge=0)  # 0: no age limit
    max_disk_percent: float = Field(85.0, ge=0, le=100)  # 0 or 100: no disk limit
    check_interval_minutes: float = Field(10.0, gt=0)


class WorkerSettings(_Section):
    """``[worker]``: the inference worker."""

    device: str = "auto"  # auto | cpu | cuda
    poll_seconds: float = Field(1.0, gt=0)  # idle poll, s; the node also wakes the worker when it queues a job
    # weights of models kept loaded between jobs, in RAM and in GPU memory; the least recently
    # used on that device leave first
    model_memory_mb: float = Field(2048.0, ge=0)
    gpu_model_memory_mb: float = Field(4096.0, ge=0)
    # load the enabled models when the worker starts, so the first job of each does not wait
    # for its weights (within model_memory_mb)
    preload_models: bool = True
    # the node's own worker, while idle, reads the series whose sending association was just
    # released (its completion signal follows after [completion] release_grace_seconds), so
    # the job does not wait for the files; one volume is kept in memory
    read_ahead: bool = True
    # run a model's network in the reduced precision its package declares validated (manifest
    # "autocast": "bfloat16") where the device computes it natively (CPUs with AVX512-BF16 or
    # AMX, CUDA GPUs with bfloat16); false: float32 everywhere. The SEG and SR say which in
    # Algorithm Parameters (0066,0032)
    reduced_precision: bool = True
    # the worker's name in the registry (`dicom-ai workers list`); "" = <host>-<process id>
    name: str = Field("", max_length=128)
    # executor "celery": the queues `dicom-ai worker` takes jobs from (e.g. ["gpu"]; rules name them)
    queues: list[str] = ["default"]
    # the worker renews its heartbeat (and its running job's) this often; a running job whose
    # heartbeat is older than lost_after_seconds is requeued (its worker died, hung or lost the
    # database), and failed after 3 attempts
    heartbeat_seconds: float = Field(5.0, gt=0)
    lost_after_seconds: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _lost_after_outlasts_heartbeats(self) -> WorkerSettings:
        if self.lost_after_seconds < 3 * self.heartbeat_seconds:
            raise ValueError("[worker] lost_after_seconds must be at least 3 x heartbeat_seconds")
        return self


class CelerySettings(_Section):
    """``[celery]``: the task engine that hands jobs to workers on other hosts when ``[node]
    executor = "celery"``. The index stays the source of truth: a job row is committed first,
    then its id is sent; the worker claims the row before it runs it.

    ``visibility_timeout_seconds`` must outlast the longest job: the broker (Redis) gives an
    unacknowledged task to another worker after it. A worker that dies is noticed sooner, by its
    heartbeat (``[worker] lost_after_seconds``), and its job is sent again."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    default_queue: str = Field("default", min_length=1, max_length=64)
    visibility_timeout_seconds: float = Field(6 * 3600.0, gt=0)


class WebSettings(_Section):
    """``[web]``: the worklist, REST API and /metrics, served by ``dicom-ai serve``.

    ``secure_cookies`` marks the session cookie ``Secure`` (RFC 6265 4.1.2.5) and names it with
    the ``__Host-`` prefix, so a browser sends it over HTTPS only: set it when a TLS reverse proxy
    is in front. ``trusted_origins`` (``scheme://host[:port]``) may send POSTs besides the
    request's own Host, for a proxy that rewrites Host. After ``login_failures_per_user``
    failed logins of one name (``login_failures_per_address`` from one address) each further one
    locks it for 1, 2, 4, ... s, at most ``login_lockout_max_seconds``. A successful HTTP Basic
    check is remembered ``basic_cache_seconds`` (0 = never), while the user is unchanged.
    """

    enabled: bool = True
    port: int = Field(8080, ge=1, le=65535)
    bind_address: str = "127.0.0.1"  # loopback unless opened on purpose
    session_hours: float = Field(12.0, gt=0)  # a login lasts this long
    refresh_seconds: int = Field(15, ge=0)  # the worklist reloads itself; 0 = never
    secure_cookies: bool = False  # true behind TLS: the session cookie is sent over HTTPS only
    trusted_origins: list[str] = []
    login_failures_per_user: int = Field(5, ge=1)
    login_failures_per_address: int = Field(20, ge=1)
    login_lockout_max_seconds: float = Field(900.0, gt=0)
    basic_cache_seconds: float = Field(60.0, ge=0, le=3600)

    @field_validator("trusted_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        """Each an origin as browsers send it (RFC 6454): ``scheme://host[:port]``, no path."""
        for origin in value:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not scheme://host[:port]")
        return [o.lower() for o in value]


class ModelEntry(_Section):
    """``[[models]]``: a model package to run and when."""

    path: Path
    enabled: bool = True
    modalities: list[str] | None = None  # default: the manifest's modality
    body_parts: list[str] | None = None  # Body Part Examined values; None = from the manifest body_region, [] = any
    destinations: list[str] | None = None  # for its default rule; None = all [[destinations]]
    review: bool = False  # its results wait for a clinician's approval (reviewer or admin) before they are sent


class Rule(_Section):
    """``[[rules]]``: when ``model`` runs on a complete series.

    The conditions that are set combine with ``combine`` (all / any); unset ones are not tested.
    ``exclude_image_types`` is a guard applied whatever ``combine`` says: a series whose images
    carry one of these Image Type values never fires (localizers by default). ``select =
    "thinnest"`` fires only on the thinnest series of the study that passes the rule (ties: most
    images). A model with no rule of its own gets a default one from its ``[[models]]`` entry and
    manifest (modality, body region, minimum slices).
    """

    name: str
    model: str  # the model's manifest name
    enabled: bool = True
    priority: int = 0  # jobs from higher priorities run first
    combine: Literal["all", "any"] = "all"
    modalities: list[str] | None = None
    body_parts: list[str] | None = None  # Body Part Examined; a series without one passes
    series_description: str | None = None  # regular expression, searched, case-insensitive
    exclude_image_types: list[str] = ["LOCALIZER"]
    slice_thickness_mm: tuple[float, float] | None = None  # [min, max]
    orientations: list[Literal["AXIAL", "CORONAL", "SAGITTAL", "OBLIQUE"]] | None = None
    min_instances: int | None = Field(None, ge=0)  # images, localizers not counted
    max_instances: int | None = Field(None, ge=0)
    calling_ae_titles: list[str] | None = None
    sop_classes: list[str] | None = None  # SOP Class UIDs
    select: Literal["each", "thinnest"] = "each"
    destinations: list[str] | None = None  # names in [[destinations]]; None = all of them
    review: bool | None = None  # results wait for a clinician's approval; None = as the model's [[models]] entry
    queue: str = Field("", max_length=64)  # executor "celery": the queue its jobs go to; "" = [celery] default_queue

    @field_validator("series_description")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v


class ReviewSettings(_Section):
    """``[review]``: clinician review of results (``review = true`` on a rule or model)."""

    # Verifying Organization (0040,A027) of an approved SR; the node's AE title when empty
    organization: str = Field("", max_length=64)


class Settings(BaseSettings):
    """All configuration of one node."""

    model_config = SettingsConfigDict(
        env_prefix="DICOM_AI_", env_nested_delimiter="__", extra="forbid"
    )

    node: NodeSettings = NodeSettings()
    peers: list[Peer] = []
    tls: TLSSettings = TLSSettings()
    completion: CompletionSettings = CompletionSettings()
    destinations: list[Destination] = []
    delivery: DeliverySettings = DeliverySettings()
    retention: RetentionSettings = RetentionSettings()
    review: ReviewSettings = ReviewSettings()
    worker: WorkerSettings = WorkerSettings()
    celery: CelerySettings = CelerySettings()
    web: WebSettings = WebSettings()
    models: list[ModelEntry] = []
    rules: list[Rule] = []
    config_path: Path | None = Field(None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment beats the file (passed as init kwargs)
        return env_settings, init_settings

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of the index."""
        return self.node.database_url or f"sqlite:///{self.node.data_dir / 'index.sqlite'}"

    @model_validator(mode="after")
    def _known_destinations(self) -> Settings:
        names = {d.name for d in self.destinations}
        if len(names) != len(self.destinations):
            raise ValueError("two [[destinations]] have the same name")
        for owner, wanted in [(f"rule {r.name!r}", r.destinations) for r in self.rules] + [
            (f"model {str(m.path)!r}", m.destinations) for m in self.models
        ]:
            unknown = sorted(set(wanted or []) - names)
            if unknown:
                raise ValueError(f"{owner} names destinations not in [[destinations]]: {unknown}")
        return self

    def destination(self, name: str) -> Destination | None:
        """The ``[[destinations]]`` entry called ``name``."""
        return next((d for d in self.destinations if d.name == name), None)

    def peer_for(self, ae_title: str, address: str) -> Peer | None:
        """The first ``[[peers]]`` entry allowing this calling AE title from this address."""
        return next((p for p in self.peers if p.allows(ae_title, address)), None)


def repo_root() -> Path:
    """The folder holding ``dicom_ai/``, ``models/`` and ``config/`` (an editable install)."""
    return Path(__file__).resolve().parent.parent


def default_model_path() -> Path:
    """The shipped default lung segmentation package (2.0.0; 1.0.0 stays in ``models/lung-unet``)."""
    return repo_root() / "models" / "lung-unet-2d"


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"{key}: {err['msg']}")
    return "; ".join(lines)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from a TOML file (optional), environment variables and overrides.

    Relative paths (``data_dir``, model and folder paths) are relative to the current working
    directory, as for most daemons (set ``WorkingDirectory`` in the systemd unit).

    Raises
    ------
    ConfigError
        If the file is missing, is not TOML, or a key is unknown or has a bad value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such configuration file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    data.update(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(where + _format_error(exc)) from None
    settings.config_path = path
    _resolve_paths(settings, Path.cwd())
    return settings


def _resolve_paths(settings: Settings, base: Path) -> None:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    settings.node.data_dir = resolve(settings.node.data_dir)
    for model in settings.models:
        model.path = resolve(model.path)
    for key in ("certificate", "private_key", "ca_certificates"):
        value = getattr(settings.tls, key)
        if value is not None:
            setattr(settings.tls, key, resolve(value))
    for dest in settings.destinations:
        if dest.path is not None:
            dest.path = resolve(dest.path)
