"""Outbox and C-STORE SCU: transcoding, folder delivery, retries then failure."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import peers
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dicom_ai.cache.db import Delivery, Job, Result, Series, open_index
from dicom_ai.cache.index import InstanceMeta, index_instance
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.export.outbox import backoff_seconds, deliver_due
from dicom_ai.export.scu import store_files

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo" / "ct_chest_LIDC-IDRI-0314" / "image"
CT = "1.2.840.10008.5.1.4.1.1.2"


def test_backoff_doubles_and_caps():
    assert [backoff_seconds(n, 30, 3600) for n in (1, 2, 3, 8, 20)] == [30, 60, 120, 3600, 3600]


def test_compressed_file_transcoded_for_a_peer_that_takes_only_implicit_le():
    received: list[pydicom.Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        received[-1].file_meta = event.file_meta
        return 0x0000

    scp = AE(ae_title="STRICT")
    scp.add_supported_context(CT, [ImplicitVRLittleEndian])
    port = peers.free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        src = sorted(DEMO.glob("*.dcm"))[0]
        outcomes = store_files([src], "127.0.0.1", port, aet="DICOM_AI", aec="STRICT")
    finally:
        server.shutdown()
    assert [o.ok for o in outcomes] == [True], outcomes
    original = pydicom.dcmread(src)
    assert original.file_meta.TransferSyntaxUID.is_compressed
    assert received[0].file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    np.testing.assert_array_equal(received[0].pixel_array, original.pixel_array)


def _one_result(sessions, store: FileStore, destinations: list[str]) -> None:
    meta = InstanceMeta("P", "N", "1.2.3", "", "", "", "1.2.3.4", "CT", "", "", 1, CT, "1.2.3.4.5", 1,
                        "1.2.840.10008.1.2")
    index_instance(sessions, meta, "x.dcm", 1, "A")
    src = sorted(DEMO.glob("*.dcm"))[0]
    rel = store.result_relpath(1, "SEG")
    store.write(rel, src.read_bytes())
    with sessions.begin() as s:
        job = Job(series=s.query(Series).one(), model_name="m", model_version="1", model_path="/m", state="done")
        result = Result(job=job, kind="SEG", sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6",
                        series_instance_uid="1.2.3.4.5", path=rel)
        s.add(result)
        for name in destinations:
            s.add(Delivery(result=result, destination=name))


def test_folder_delivered_and_dead_peer_retried_until_the_horizon_then_dead_letter(index_url, tmp_path):
    settings = load_settings(
        None,
        node={"database_url": index_url, "data_dir": str(tmp_path / "var")},
        destinations=[
            {"name": "folder", "kind": "folder", "path": str(tmp_path / "out")},
            {"name": "dead", "ae_title": "NOBODY", "host": "127.0.0.1", "port": peers.free_port()},
        ],
        delivery={"retry_initial_seconds": 60, "retry_max_seconds": 600, "horizon_hours": 0.05},
    )
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    _one_result(sessions, store, ["folder", "dead"])
    assert deliver_due(sessions, store, settings) == 1
    assert (tmp_path / "out" / "1.2.3.4.5.6.dcm").read_bytes() == sorted(DEMO.glob("*.dcm"))[0].read_bytes()
    with sessions() as s:
        dead = s.query(Delivery).filter_by(destination="dead").one()
        assert dead.state == "pending" and dead.attempts == 1 and "not established" in dead.last_status
        wait = (dead.next_attempt_at - dt.datetime.now(dt.UTC).replace(tzinfo=None)).total_seconds()
        assert 50 < wait <= 60
    assert deliver_due(sessions, store, settings) == 0  # not due yet: nothing tried
    # retries after 60 s and 120 s fall within the 180 s horizon; the next (240 s) would not
    for attempt in (2, 3):
        with sessions.begin() as s:
            s.query(Delivery).update({"next_attempt_at": dt.datetime(2000, 1, 1)})
        deliver_due(sessions, store, settings)
        with sessions() as s:
            state = s.query(Delivery).filter_by(destination="dead").one().state
        assert state == ("pending" if attempt == 2 else "failed"), (attempt, state)
    with sessions() as s:
        dead = s.query(Delivery).filter_by(destination="dead").one()
        assert dead.attempts == 3
        assert "not established" in dead.last_status
        assert s.query(Delivery).filter_by(destination="folder").one().attempts == 1
    # resend: due again with a new horizon
    from dicom_ai.export.outbox import resend
    assert resend(sessions, failed=True) == 1
    with sessions() as s:
        assert s.query(Delivery).filter_by(destination="dead").one().state == "pending"


def test_results_go_to_the_destinations_their_rule_names(index_url, tmp_path):
    from dicom_ai.export.outbox import create_deliveries

    settings = load_settings(
        None,
        node={"database_url": index_url, "data_dir": str(tmp_path / "var")},
        destinations=[{"name": "a", "kind": "folder", "path": str(tmp_path / "a")},
                      {"name": "b", "kind": "folder", "path": str(tmp_path / "b")}],
        rules=[{"name": "r", "model": "m", "destinations": ["b"]}],
    )
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    _one_result(sessions, store, [])
    with sessions.begin() as s:
        result = s.query(Result).one()
        create_deliveries(s, result, settings, settings.rules[0].destinations)
        create_deliveries(s, result, settings, None)
    with sessions() as s:
        assert sorted(d.destination for d in s.query(Delivery)) == ["a", "b", "b"]


@pytest.mark.integration  # starts a short process, for a pid that has ended
def test_nodes_sharing_the_index_settle_only_transfers_an_ended_process_left(index_url, tmp_path):
    """Five deliveries left ``sending``: claimed by nobody (an older node), by an ended process
    of this host, by a live one, by another host just now and by another host 2 h ago. The
    first, second and last are settled (looked up in their folder, absent, so due again); the
    two that may be under way elsewhere are left alone, and the outbox sends only the three."""
    import subprocess

    from dicom_ai.export.outbox import recover_deliveries
    from dicom_ai.lifetime import this_host

    names = ["nobody", "ended", "live", "elsewhere", "elsewhere-2h"]
    settings = load_settings(
        None,
        node={"database_url": index_url, "data_dir": str(tmp_path / "var")},
        destinations=[{"name": n, "kind": "folder", "path": str(tmp_path / n)} for n in names],
    )
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    _one_result(sessions, store, names)
    ended = subprocess.Popen(["true"])
    ended.wait()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    claims = {"nobody": ("", None, None), "ended": (this_host(), ended.pid, now),
              "live": (this_host(), os.getppid(), now), "elsewhere": ("another-host", 4242, now),
              "elsewhere-2h": ("another-host", 4242, now - dt.timedelta(hours=2))}
    with sessions.begin() as s:
        for row in s.query(Delivery):
            row.state = "sending"
            row.claimed_host, row.claimed_pid, row.claimed_at = claims[row.destination]
    assert recover_deliveries(sessions, settings) == (0, 3)
    with sessions() as s:
        states = {d.destination: d.state for d in s.query(Delivery)}
    assert states == {"nobody": "pending", "ended": "pending", "live": "sending", "elsewhere": "sending",
                      "elsewhere-2h": "pending"}, states
    assert recover_deliveries(sessions, settings) == (0, 0)
    assert deliver_due(sessions, store, settings) == 3
    assert sorted(p.parent.name for p in tmp_path.glob("*/1.2.3.4.5.6.dcm")) == ["elsewhere-2h", "ended", "nobody"]
    with sessions() as s:
        sent = s.query(Delivery).filter_by(destination="ended").one()
        assert (sent.state, sent.claimed_host, sent.claimed_pid) == ("delivered", this_host(), os.getpid())


def test_unknown_destination_names_are_a_config_error():
    from dicom_ai.config import ConfigError

    with pytest.raises(ConfigError, match="names destinations not in"):
        load_settings(None, rules=[{"name": "r", "model": "m", "destinations": ["nowhere"]}])
    with pytest.raises(ConfigError, match="needs url"):
        load_settings(None, destinations=[{"name": "w", "kind": "stow"}])
