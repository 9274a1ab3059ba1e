import os
import subprocess
import time
from pathlib import Path

import peers
import pytest

from dicom_ai.cache import flush
from dicom_ai.cache.store import SPARE_FILES, SPARE_SUFFIX, FileStore, InvalidUID, atomic_write, check_uid, unused_spare
from dicom_ai.lifetime import this_host


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


@pytest.mark.integration  # starts two short processes
def test_stale_temporaries_removed_and_those_being_written_kept(tmp_path):
    """A shared store: a temporary whose writer has ended on this host (exited, or a zombie not
    yet reaped) is removed at once; one another host, or a live process here, may be writing
    is kept until it is an hour old; a name that does not say who wrote it is removed."""
    store = FileStore(tmp_path)
    folder = tmp_path / "instances" / "1"
    folder.mkdir(parents=True)
    ended = subprocess.Popen(["true"])
    ended.wait()
    zombie = subprocess.Popen(["true"])  # not waited for: a zombie until the end of the test
    peers.wait_for(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z",
                   10, "a zombie")
    host, live = this_host(), os.getppid()
    names = {
        ".tmp-abc": "removed",  # an older name: no writer named
        f".tmp-{ended.pid}@{host}@1-a.dcm": "removed",
        f".tmp-{zombie.pid}@{host}@1-b.dcm": "removed",
        f".tmp-{live}@{host}@1-c.dcm": "kept",
        f".tmp-{live}@{host}@2-d.dcm": "old",
        f".tmp-{live}@another-host@1-e.dcm": "kept",
        f".tmp-{ended.pid}@another-host@1-f.dcm": "old",  # its pid means nothing here
        # spares (empty until used): a live process's is kept however old, one with data is not
        f".tmp-{live}@{host}@3-spare": "old spare",
        f".tmp-{ended.pid}@{host}@2-spare": "removed spare",
        f".tmp-{live}@{host}@4-spare": "old",
        f".tmp-{live}@another-host@2-spare": "old spare",  # another host's: its age decides
    }
    for name, fate in names.items():
        (folder / name).write_bytes(b"" if fate.endswith("spare") else b"x")
        if fate.startswith("old"):
            os.utime(folder / name, (time.time() - 3601, time.time() - 3601))
    names[f".tmp-{live}@{host}@3-spare"] = "kept"
    assert store.remove_stale_temporaries() == 8
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n, f in names.items() if f == "kept")
    zombie.wait()


def _files(root):
    """The files under ``root``, less the store's unused spares."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not unused_spare(p))


def _spares(root):
    return sorted((root / "incoming").glob("*" + SPARE_SUFFIX))


def test_write_ahead_writes_into_a_spare_made_ahead_and_close_removes_the_unused(tmp_path):
    """After the first write_ahead a flushing thread makes SPARE_FILES empty temporary files;
    the next write_ahead writes into one of them. A spare removed under the store (another
    node's sweep) is not used. close_spares removes the unused ones, and no more are made."""
    store = FileStore(tmp_path)
    store.write_ahead(b"first").discard()
    spares = peers.wait_for(lambda: len(s := _spares(tmp_path)) == SPARE_FILES and s, 10, "the spares")
    assert all(unused_spare(p) for p in spares)
    pending = store.write_ahead(b"second")
    assert pending.tmp in spares and not unused_spare(pending.tmp)
    staged = pending.staged(store.abspath("instances/1.2/1.2.3/1.2.3.4.dcm"))
    staged.place()
    staged.sync()
    assert store.abspath("instances/1.2/1.2.3/1.2.3.4.dcm").read_bytes() == b"second"

    peers.wait_for(lambda: len(_spares(tmp_path)) == SPARE_FILES, 10, "the spares made again")
    for spare in _spares(tmp_path):
        spare.unlink()
    pending = store.write_ahead(b"third")
    assert pending.tmp.name.endswith("-instance.dcm") and pending.tmp.read_bytes() == b"third"
    pending.discard()

    peers.wait_for(lambda: len(_spares(tmp_path)) == SPARE_FILES, 10, "the spares made again")
    store.close_spares()
    store.write_ahead(b"after the close").discard()
    time.sleep(0.2)  # a flushing thread would have made a spare by now
    assert not list(tmp_path.rglob(".tmp-*"))


def test_a_file_written_ahead_is_placed_in_a_new_folder_or_removed(tmp_path):
    """write_ahead writes before the destination is known: staged + placed, the file lands in
    its (new) folder with the bytes sent; discarded, nothing is left; a crash before either
    leaves only a temporary name, which the start-up sweep removes."""
    store = FileStore(tmp_path)
    data = os.urandom(300_000)
    pending = store.write_ahead(data)
    assert _files(tmp_path) == [str(pending.tmp.relative_to(tmp_path))]
    staged = pending.staged(store.abspath("instances/1.2/1.2.3/1.2.3.4.dcm"))
    staged.place()
    staged.sync()
    pending.discard()  # staged: nothing more to do
    assert _files(tmp_path) == ["instances/1.2/1.2.3/1.2.3.4.dcm"]
    assert store.abspath("instances/1.2/1.2.3/1.2.3.4.dcm").read_bytes() == data

    store.write_ahead(b"refused").discard()
    assert _files(tmp_path) == ["instances/1.2/1.2.3/1.2.3.4.dcm"]

    store.write_ahead(b"killed before it was placed")
    assert store.remove_stale_temporaries() == 0  # its writer, this process, may still place it
    assert store.remove_stale_temporaries(stale_after=0) == 1  # as when it has stayed too long
    assert _files(tmp_path) == ["instances/1.2/1.2.3/1.2.3.4.dcm"]


def test_a_failed_write_ahead_leaves_no_temporary(tmp_path, monkeypatch):
    store = FileStore(tmp_path)

    def full(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        store.write_ahead(b"x" * 1000)
    monkeypatch.undo()
    monkeypatch.setattr(flush, "_aio_library", lambda: None)  # on a flushing thread, where
    monkeypatch.setattr(os, "fsync", full)  # the fsync fails
    pending = store.write_ahead(b"y" * 1000)
    with pytest.raises(OSError):
        pending.staged(store.abspath("instances/1/2/3.dcm"))
    assert _files(tmp_path) == []
    monkeypatch.undo()
    discarded = store.write_ahead(b"z" * 1000)  # a refused instance's file, its fsync under way
    discarded.discard()
    assert _files(tmp_path) == []
