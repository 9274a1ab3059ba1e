import os

import pytest

from dicom_ai.cache.store import FileStore, InvalidUID, atomic_write, check_uid


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0.1"])
def test_valid_uids(uid):
    assert check_uid(uid) == uid


@pytest.mark.parametrize(
    "uid", ["", "../../etc/passwd", "1.2.3/../4", "1..2", "1.02", "1.2.a", "1." + "2" * 64, "/abs"]
)
def test_invalid_uids_never_reach_a_path(tmp_path, uid):
    store = FileStore(tmp_path)
    with pytest.raises(InvalidUID):
        store.instance_relpath("1.2.3", "1.2.4", uid)


def test_atomic_write_leaves_no_temporary_and_keeps_old_file_on_error(tmp_path, monkeypatch):
    dest = tmp_path / "a" / "b.dcm"
    atomic_write(dest, b"first")
    assert dest.read_bytes() == b"first"

    def boom(*_a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(dest, b"second")
    assert dest.read_bytes() == b"first"
    assert [p.name for p in dest.parent.iterdir()] == ["b.dcm"]


def test_stale_temporaries_removed(tmp_path):
    store = FileStore(tmp_path)
    (tmp_path / "instances" / "1").mkdir(parents=True)
    (tmp_path / "instances" / "1" / ".tmp-abc").write_bytes(b"x")
    assert store.remove_stale_temporaries() == 1
