"""Fixtures of the receiver's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import peers
import pytest

from dicom_ai.cache.db import open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.receive.scp import StorageSCP


@pytest.fixture
def running_scp(tmp_path: Path) -> Iterator[StorageSCP]:
    """The C-STORE SCP in this process, AE title DICOM_AI on a free loopback port, data in
    ``tmp_path/var`` (SQLite index, ``synchronous=FULL``), trusting the calling AE title
    STORESCU from 127.0.0.1; stopped at the end of the test."""
    settings = load_settings(
        None,
        node={"ae_title": "DICOM_AI", "port": peers.free_port(), "bind_address": "127.0.0.1",
              "data_dir": str(tmp_path / "var")},
        peers=[{"ae_title": "STORESCU", "host": "127.0.0.1"}],
    )
    scp = StorageSCP(settings, FileStore(settings.node.data_dir), open_index(settings.database_url))
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()
