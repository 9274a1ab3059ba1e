"""Shared pytest fixtures. Keep this small and generic; the helpers themselves live in peers.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make `import peers` work everywhere

import peers  # noqa: E402
import pgserver  # noqa: E402


def require(tool: str | None, name: str) -> str:
    """Skip the test (with the reason) when an external program is not installed."""
    if tool is None:
        pytest.skip(f"{name} is not installed")
    return tool


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``; skips if the folder is missing."""
    if not peers.SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {peers.SHARED_DATA}")
    return peers.SHARED_DATA


@pytest.fixture(scope="session")
def lidc_series(shared_data: Path) -> list[Path]:
    """The 275 slices of the LIDC-IDRI-0314 chest CT, sorted by file name."""
    return sorted(peers.LIDC_SERIES.glob("*.dcm"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[pgserver.PostgresServer]:
    """One PostgreSQL server (Debian's ``postgresql``) for the test session, on 127.0.0.1."""
    require(pgserver.bin_dir(), "PostgreSQL")
    with pgserver.PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty index, once on each engine the node supports: an SQLite file under
    ``tmp_path``, and a fresh database, already at the newest schema, on :func:`postgres`."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    server: pgserver.PostgresServer = request.getfixturevalue("postgres")
    return server.migrated_database()


@pytest.fixture
def dcmtk() -> None:
    """Skip unless DCMTK's storescu and echoscu are installed."""
    require(peers.dcmtk_tool("storescu"), "DCMTK storescu")
    require(peers.dcmtk_tool("echoscu"), "DCMTK echoscu")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[peers.Orthanc]:
    """A fresh Orthanc (AE ``ORTHANC``) on free ports, storage and log under ``tmp_path``."""
    require(peers.orthanc_binary(), "Orthanc")
    with peers.Orthanc(workdir=tmp_path / "orthanc") as pacs:
        yield pacs


@pytest.fixture
def totalseg_series(shared_data: Path, tmp_path: Path) -> list[Path]:
    """The TotalSegmentator JPEG 2000 series with SOP UIDs restored, in a temporary copy."""
    return peers.restore_totalseg_series(tmp_path / "totalseg")


@pytest.fixture(scope="session")
def lidc_volume():
    """The full LIDC-IDRI-0314 chest CT (275 x 512 x 512), loaded once per test session (the
    report and viewer tests share it)."""
    from dicom_ai.infer.volume import load_series
    from tests.report.conftest import LIDC

    if not LIDC.is_dir():
        pytest.skip(f"shared test data not found at {LIDC}")
    return load_series(sorted(LIDC.glob("*.dcm")))


@pytest.fixture(scope="session")
def lidc_mask(lidc_volume):
    """A two-label lung mask of :func:`lidc_volume` (:func:`tests.report.conftest.lung_mask`)."""
    from tests.report.conftest import lung_mask

    return lung_mask(lidc_volume)
