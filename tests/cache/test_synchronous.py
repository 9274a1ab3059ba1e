"""The receivers commit instance rows without waiting for the disk (SQLite
``synchronous=NORMAL``); every other connection waits (``FULL``).

An instance row a power loss takes is made again from its file, which the receiver fsyncs
before the success status: tests/receive/test_identity.py
``test_node_start_indexes_an_instance_file_a_kill_left_unindexed`` starts a node on such a file.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from dicom_ai.cache.db import make_engine, open_index, receiver_index

NORMAL, FULL = 1, 2  # PRAGMA synchronous values (https://sqlite.org/pragma.html#pragma_synchronous)


def _synchronous(sessions) -> int:
    with sessions() as s:
        return s.execute(text("PRAGMA synchronous")).scalar_one()


def test_receivers_commit_without_fsync_and_everyone_else_with_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    node = open_index(url)  # creates the schema
    receiver = receiver_index(url)
    assert _synchronous(node) == FULL
    assert _synchronous(receiver) == NORMAL
    with receiver() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar_one() == 1


def test_an_unknown_synchronous_setting_is_refused(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        make_engine(f"sqlite:///{tmp_path / 'index.sqlite'}", synchronous="OFF")
