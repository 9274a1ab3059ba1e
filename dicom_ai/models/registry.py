"""The model registry: model packages an admin added, their versions, and every change.

Packages live under ``<data_dir>/models/<name>/<version>/`` (a copy: the folder or zip they
came from may go away) and are indexed in the ``model_versions`` table; at most one version
of a name is *active*, and the active versions are the models the node routes series to
(beside any ``[[models]]`` entries of the configuration, which pin a package by path). Every
change (add, remove, enable, disable, test) is a ``model_events`` row: when, who, what.

:func:`add_package` accepts a package folder, a zip of one, or a MONAI bundle folder
(:mod:`dicom_ai.models.bundle`), verifies the weights' SHA-256 against the manifest and runs
the model once on the built-in sample (:func:`run_on_sample`) before accepting it.

On a node's first start, an empty registry of a configuration without ``[[models]]`` is
seeded with the packages shipped in ``models/``: the lung segmentation model active, the
others (the body-region classifier) added but not active (:func:`seed_shipped`).
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_ai.cache.db import Job, ModelEvent, ModelVersion, utcnow
from dicom_ai.cache.states import JobState
from dicom_ai.config import Settings, default_model_path, repo_root
from dicom_ai.models.bundle import import_bundle
from dicom_ai.package.manifest import ModelManifest, ModelPackageError, load_manifest, verify_weights

if TYPE_CHECKING:
    from dicom_ai.infer.runtime import ClassResult

log = logging.getLogger(__name__)

#: Slices of the bundled demo CT used as the built-in sample (every other one of 100-195:
#: 48 slices at 2 mm through both lungs and the heart).
SAMPLE_SLICES = range(100, 196, 2)


class RegistryError(RuntimeError):
    """A registry change was refused; the message says why."""


class AlreadyRegistered(RegistryError):
    """The package's name and version are in the registry already (perhaps added a moment ago by
    another process)."""


def current_user() -> str:
    """Who makes a change from the command line: ``$SUDO_USER`` (an admin using sudo), else
    the login name."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def models_dir(settings: Settings) -> Path:
    """``<data_dir>/models``: where the registry keeps its packages."""
    return Path(settings.node.data_dir) / "models"


def record(session: Session, who: str, action: str, name: str, version: str = "", detail: str = "") -> None:
    """Add one ``model_events`` row (committed with the caller's transaction)."""
    session.add(ModelEvent(at=utcnow(), who=who[:64], action=action, name=name, version=version, detail=detail))


def generation(sessions: sessionmaker) -> int:
    """A number that changes whenever the registry changes (the last event's id; 0 if none)."""
    with sessions() as s:
        return s.scalar(select(func.max(ModelEvent.id))) or 0


def find(session: Session, spec: str) -> ModelVersion:
    """The registry row for ``"name"`` (its active version, else its newest) or
    ``"name@version"``.

    Raises
    ------
    RegistryError
        If no such model or version is in the registry.
    """
    name, _, version = spec.partition("@")
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.id.desc())
    ).all()
    if not rows:
        raise RegistryError(f"no model {name!r} in the registry (dicom-ai models list)")
    if version:
        row = next((r for r in rows if r.version == version), None)
        if row is None:
            have = ", ".join(r.version for r in rows)
            raise RegistryError(f"model {name!r} has no version {version!r} (versions: {have})")
        return row
    return next((r for r in rows if r.active), rows[0])


def active_versions(sessions: sessionmaker) -> list[ModelVersion]:
    """The active version of each model name, by name."""
    with sessions() as s:
        return list(s.scalars(select(ModelVersion).where(ModelVersion.active).order_by(ModelVersion.name)))


# -- packages: unpacking and the built-in sample -------------------------------------------------


@dataclass
class Staged:
    """A package unpacked (or imported) into a staging folder, ready to check and move in."""

    path: Path
    manifest: ModelManifest
    notes: list[str] = field(default_factory=list)  # what a bundle import could not map


def _extract_zip(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(src) as zf:
        for member in zf.namelist():
            target = (dest / member).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise RegistryError(f"{src}: member {member!r} would be written outside the package folder")
        zf.extractall(dest)
    if (dest / "manifest.json").is_file():
        return dest
    inner = [p for p in dest.iterdir() if p.is_dir()]
    if len(inner) == 1 and (inner[0] / "manifest.json").is_file():
        return inner[0]
    raise RegistryError(f"{src}: no manifest.json at the top of the zip or of its one folder")


def stage(src: Path, staging: Path) -> Staged:
    """Unpack a package folder, zip, or MONAI bundle into ``staging`` and read its manifest.

    Raises
    ------
    RegistryError
        If ``src`` is none of these, or its manifest is missing or invalid.
    """
    src = Path(src)
    notes: list[str] = []
    if src.is_file() and zipfile.is_zipfile(src):
        package = _extract_zip(src, staging / "zip")
    elif src.is_dir() and (src / "manifest.json").is_file():
        package = staging / "package"
        shutil.copytree(src, package)
    elif src.is_dir() and (src / "configs" / "metadata.json").is_file():
        package = staging / "bundle"
        try:
            imported = import_bundle(src, package)
        except ValueError as exc:
            raise RegistryError(f"{src}: MONAI bundle not imported: {exc}") from exc
        notes = [f"not mapped: {line}" for line in imported.unmapped]
    else:
        raise RegistryError(f"{src}: not a model package (a folder or zip with manifest.json) or a MONAI "
                            "bundle (a folder with configs/metadata.json)")
    try:
        manifest = load_manifest(package)
    except FileNotFoundError as exc:
        raise RegistryError(f"{src}: {exc}") from exc
    except (ValidationError, ValueError) as exc:
        raise RegistryError(f"{src}: manifest.json is not valid: {exc}") from exc
    return Staged(package, manifest, notes)


def sample_paths() -> list[Path]:
    """The built-in sample: slices :data:`SAMPLE_SLICES` (in position order, from the feet) of
    the bundled demo chest CT."""
    import pydicom

    folder = repo_root() / "demo" / "ct_chest_LIDC-IDRI-0314" / "image"
    position = {p: float(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
                         .ImagePositionPatient[2]) for p in folder.glob("*.dcm")}
    files = sorted(position, key=position.__getitem__)
    return [files[i] for i in SAMPLE_SLICES if i < len(files)]


def run_on_sample(package: Path, device: str | None = None) -> tuple[float, float, str]:
    """Load a package and run it once on the built-in sample; check its output.

    Returns
    -------
    load_seconds, run_seconds, summary
        Load time and inference time (s), and what the model said (segment voxel counts or
        the class and probability).

    Raises
    ------
    RegistryError
        If the model cannot be loaded or runs but gives output that does not fit its manifest
        (a mask of another shape or with values that are not its labels; probabilities that are
        not finite).
    """
    import numpy as np

    from dicom_ai.infer.runtime import load_model  # deferred: start-up time (torch)
    from dicom_ai.infer.volume import load_series  # deferred: start-up time (numpy, pydicom)

    volume = load_series(sample_paths())
    try:
        # in the precision a node would run it in (reduced where the package and the device allow)
        model = load_model(package, device=device, reduced_precision=True)
    except (ModelPackageError, FileNotFoundError) as exc:
        raise RegistryError(str(exc)) from exc
    t0 = time.perf_counter()
    try:
        output, _ = model.predict(volume)
    except Exception as exc:  # noqa: BLE001 - whatever a foreign network raises, refuse it with the reason
        raise RegistryError(f"{model.manifest.label} failed on the built-in sample: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - t0
    m = model.manifest
    if m.task == "segmentation":
        output = cast("np.ndarray", output)  # the task decides what predict() returns
        if output.shape != volume.shape or output.dtype != np.uint8:
            raise RegistryError(f"{m.label}: mask {output.shape} {output.dtype}, expected {volume.shape} uint8")
        values = set(np.unique(output).tolist()) - {0}
        unknown = values - {lb.value for lb in m.labels}
        if unknown:
            raise RegistryError(f"{m.label}: mask values {sorted(unknown)} are not labels of its manifest")
        counts = {lb.name: int((output == lb.value).sum()) for lb in m.labels}
        summary = ", ".join(f"{k} {v} voxels" for k, v in counts.items())
    else:
        output = cast("ClassResult", output)
        probs = np.asarray(output.probabilities)
        if not np.all(np.isfinite(probs)) or abs(float(probs.sum()) - 1.0) > 1e-3:
            raise RegistryError(f"{m.label}: class probabilities {probs.tolist()} are not a distribution")
        summary = f"{output.top.name} ({output.probability:.2f})"
    return model.load_seconds, seconds, summary


# -- changes --------------------------------------------------------------------------------------


def add_package(
    sessions: sessionmaker,
    settings: Settings,
    src: Path,
    who: str,
    *,
    activate: bool | None = None,
    check: Callable[[Path], tuple[float, float, str]] | None = run_on_sample,
    detail: str = "",
) -> tuple[ModelVersion, list[str]]:
    """Add a package (folder, zip or MONAI bundle) to the registry.

    Steps: unpack into a staging folder under ``<data_dir>/models``; validate the manifest;
    refuse a name and version already there; verify the weights' SHA-256 (the manifest must
    give one); run ``check`` (default :func:`run_on_sample`); then, in one transaction, add the
    row and an ``add`` event and move the folder to ``<data_dir>/models/<name>/<version>``.
    Nothing is left behind when a step fails.

    Parameters
    ----------
    activate:
        True: the new version becomes the active one of its name; False: it does not;
        None (default): it does if no version of its name is active.
    check:
        The trial run; None skips it (shipped packages, tested in CI).

    Returns
    -------
    row, notes
        The registry row, and lines for the admin (what a bundle import could not map, the
        sample run's result).

    Raises
    ------
    RegistryError
        Whatever step refused the package, with the reason.
    """
    root = models_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        staged = stage(Path(src), staging)
        m = staged.manifest
        with sessions() as s:
            if s.scalar(select(ModelVersion.id).where(ModelVersion.name == m.name, ModelVersion.version == m.version)):
                raise AlreadyRegistered(f"{m.label} is already in the registry; give the new package another version")
        if not m.sha256:
            raise RegistryError(f"{m.label}: the manifest gives no sha256 of {m.weights}; the weights cannot be verified")
        try:
            verify_weights(staged.path, m)
        except (ModelPackageError, FileNotFoundError) as exc:
            raise RegistryError(str(exc)) from exc
        notes = list(staged.notes)
        sample_seconds = None
        if check is not None:
            load_s, sample_seconds, summary = check(staged.path)
            notes.append(f"built-in sample ({len(SAMPLE_SLICES)} CT slices): {summary}; "
                         f"load {load_s:.2f} s, run {sample_seconds:.2f} s")
        final = root / m.name / m.version
        moved = False
        try:
            with sessions.begin() as s:
                row = ModelVersion(
                    name=m.name, version=m.version, task=m.task, runtime=m.runtime, path=str(final),
                    sha256=m.sha256.lower(), active=False, source=str(Path(src).resolve())[:1024],
                    sample_seconds=sample_seconds, added_at=utcnow(), added_by=who[:64],
                )
                s.add(row)
                # the insert holds the index's write lock until the commit: a process adding the same
                # name and version at the same time fails here, before it touches the folder
                s.flush()
                active = s.scalar(select(ModelVersion).where(ModelVersion.name == m.name, ModelVersion.active))
                make_active = activate if activate is not None else active is None
                if make_active and active is not None:
                    active.active = False
                row.active = make_active
                what = [f"from {Path(src).resolve()}", f"sha256 {m.sha256[:12]}…", m.runtime,
                        "active" if make_active else "not active"] + ([detail] if detail else []) + notes
                record(s, who, "add", m.name, m.version, "; ".join(what))
                if final.exists():  # left by a crash between a move and its commit: no row has it
                    shutil.rmtree(final)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged.path, final)
                moved = True
        except IntegrityError as exc:
            raise AlreadyRegistered(f"{m.label} is already in the registry; give the new package another version") from exc
        except Exception:
            if moved:
                shutil.rmtree(final, ignore_errors=True)
            raise
        return row, notes
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def enable(sessions: sessionmaker, spec: str, who: str) -> ModelVersion:
    """Make ``"name"`` (its newest version) or ``"name@version"`` the active version of its name.

    Raises
    ------
    RegistryError
        If there is no such model or version.
    """
    with sessions.begin() as s:
        row = find(s, spec)
        if "@" not in spec:  # the newest version, not the one that happens to be active
            row = s.scalars(select(ModelVersion).where(ModelVersion.name == row.name)
                            .order_by(ModelVersion.id.desc())).first()
        before = s.scalar(select(ModelVersion).where(ModelVersion.name == row.name, ModelVersion.active))
        if before is not None and before.id != row.id:
            before.active = False
        row.active = True
        previous = f"; was {before.version}" if before is not None and before.id != row.id else ""
        record(s, who, "enable", row.name, row.version, f"active{previous}")
        return row


def disable(sessions: sessionmaker, name: str, who: str) -> ModelVersion:
    """Make no version of model ``name`` active: the node stops starting jobs for it (queued
    jobs still run).

    Raises
    ------
    RegistryError
        If the model is not in the registry or no version of it is active.
    """
    with sessions.begin() as s:
        row = find(s, name.partition("@")[0])
        if not row.active:
            raise RegistryError(f"no version of {row.name!r} is active")
        row.active = False
        record(s, who, "disable", row.name, row.version, "no version active")
        return row


def remove(sessions: sessionmaker, settings: Settings, spec: str, who: str) -> ModelVersion:
    """Remove a version (``"name@version"``; ``"name"`` when it has one version) and its folder.

    Raises
    ------
    RegistryError
        If the version is active (disable it or enable another first), has jobs queued or
        running, or ``spec`` is ambiguous.
    """
    with sessions.begin() as s:
        row = find(s, spec)
        if "@" not in spec:
            count = s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.name == row.name))
            if count > 1:
                raise RegistryError(f"{row.name!r} has {count} versions: name one as {row.name}@VERSION")
        if row.active:
            raise RegistryError(f"{row.name} {row.version} is active: disable it or enable another version first")
        waiting = s.scalar(select(func.count()).select_from(Job).where(
            Job.model_path == row.path, Job.state.in_((JobState.QUEUED, JobState.RUNNING))))
        if waiting:
            raise RegistryError(f"{row.name} {row.version} has {waiting} jobs queued or running; remove it when they end")
        s.delete(row)
        record(s, who, "remove", row.name, row.version, f"folder {row.path} deleted")
        path = Path(row.path)
    if path.resolve().is_relative_to(models_dir(settings).resolve()):  # never a folder outside it
        shutil.rmtree(path, ignore_errors=True)
    return row


def seed_shipped(sessions: sessionmaker, settings: Settings) -> list[ModelVersion]:
    """On a registry that never had an event, in a configuration without ``[[models]]``: add the
    packages shipped in ``models/`` (the lung model active, the others not). No-op otherwise.
    Safe to call from several processes: the second finds the rows of the first.
    """
    if settings.models or generation(sessions):
        return []
    shipped = sorted(p for p in (repo_root() / "models").iterdir() if (p / "manifest.json").is_file())
    added = []
    for package in shipped:
        try:
            row, _ = add_package(sessions, settings, package, "dicom-ai", check=None,
                                 activate=package.resolve() == default_model_path().resolve(),
                                 detail="shipped with dicom-ai")
            added.append(row)
        except AlreadyRegistered:  # another process seeded it first
            pass
        except RegistryError as exc:
            log.error("shipped model %s not added: %s", package.name, exc)
    return added
