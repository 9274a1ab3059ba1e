"""Smoke tests of the integration-test peers in tests/peers.py (Orthanc, DCMTK, dciodvfy)."""

from __future__ import annotations

import socket
from pathlib import Path

import peers
import pydicom
import pytest

pytestmark = pytest.mark.integration


def test_free_port_is_bindable() -> None:
    port = peers.free_port()
    assert port not in (4242, 8042)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_shared_data_path_is_relative_to_repo() -> None:
    assert peers.SHARED_DATA == peers.REPO_ROOT.parent / "shared" / "data"


def test_dcmtk_tools_are_dcmtk_not_pynetdicom(dcmtk: None) -> None:
    """pynetdicom installs same-named console scripts; peers must pick DCMTK's."""
    exe = peers.dcmtk_tool("storescu")
    assert exe is not None and peers._is_dcmtk(exe)


def test_orthanc_echo_store_find(
    orthanc: peers.Orthanc, dcmtk: None, lidc_series: list[Path], tmp_path: Path
) -> None:
    echo = peers.echoscu("127.0.0.1", orthanc.dicom_port, aec=orthanc.aet)
    assert echo.returncode == 0, echo.stderr

    src = tmp_path / "five"
    src.mkdir()
    for f in lidc_series[:5]:
        (src / f.name).symlink_to(f)
    sent = peers.storescu("127.0.0.1", orthanc.dicom_port, src, aec=orthanc.aet, required_only=True)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    first = pydicom.dcmread(lidc_series[0], stop_before_pixels=True)
    expected = {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in lidc_series[:5]
    }
    assert orthanc.sop_instance_uids(first.SeriesInstanceUID) == expected
    studies = orthanc.find("Study", {"StudyInstanceUID": first.StudyInstanceUID})
    assert len(studies) == 1

    instances = orthanc.instances_of_study(first.StudyInstanceUID)
    assert {i["sop_instance_uid"] for i in instances} == expected
    assert {i["sop_class_uid"] for i in instances} == {first.SOPClassUID}

    back = orthanc.download_instance(instances[0]["id"], tmp_path)
    assert pydicom.dcmread(back).SOPInstanceUID in expected


def test_orthanc_stores_to_a_declared_modality(
    orthanc: peers.Orthanc, lidc_series: list[Path], tmp_path: Path
) -> None:
    """Orthanc -> second Orthanc over C-STORE, declared at run time with PUT /modalities."""
    orthanc.upload(lidc_series[0])
    with peers.Orthanc(aet="SECOND", workdir=tmp_path / "second") as second:
        orthanc.add_modality("second", second.aet, "127.0.0.1", second.dicom_port)
        assert orthanc.echo_modality("second")
        ids = orthanc.find("Instance", expand=False)
        orthanc.store_to_modality("second", ids)
        assert len(second.find("Instance")) == 1


def test_system_orthanc_ports_do_not_matter(tmp_path: Path) -> None:
    """Holding 4242/8042 (as a system Orthanc would) must not disturb a test Orthanc."""
    peers_require_orthanc()
    held: list[socket.socket] = []
    for port in (4242, 8042):
        s = socket.socket()
        try:
            s.bind(("", port))
            s.listen()
            held.append(s)
        except OSError:  # a real system Orthanc (or something else) already has it
            s.close()
    try:
        with peers.Orthanc(workdir=tmp_path / "o") as pacs:
            assert pacs.dicom_port not in (4242, 8042)
            assert pacs.http_port not in (4242, 8042)
            assert pacs.get("/system")["DicomPort"] == pacs.dicom_port
    finally:
        for s in held:
            s.close()


def peers_require_orthanc() -> None:
    if peers.orthanc_binary() is None:
        pytest.skip("Orthanc is not installed")


def test_orthanc_start_failure_reports_log(tmp_path: Path) -> None:
    peers_require_orthanc()
    bad = peers.Orthanc(workdir=tmp_path / "bad", config={"StorageDirectory": "/proc/no/such/dir"},
                        startup_timeout=10)
    try:
        with pytest.raises(peers.OrthancError, match="log tail"):
            bad.start()
        assert bad.proc is None
    finally:
        bad.stop()  # never leave an Orthanc behind, even if start() unexpectedly succeeded


def test_dciodvfy_on_lidc_slice(lidc_series: list[Path]) -> None:
    if peers.dciodvfy_binary() is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    errors, warnings = peers.dciodvfy(lidc_series[0])
    # The source itself has a VR error in the CTP private tag (0013,1010) Project Name.
    assert any("Project Name" in e for e in errors)
    assert any("Retired attribute" in w for w in warnings)
    assert all(not e.startswith("Error") for e in errors)


def test_restore_totalseg_series(totalseg_series: list[Path]) -> None:
    assert len(totalseg_series) == 20
    ds = pydicom.dcmread(totalseg_series[0])
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID != ""
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID != ""
    assert ds.StudyInstanceUID and ds.SeriesInstanceUID
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID
                for f in totalseg_series}) == 1
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert ds.pixel_array.shape == (512, 512)


def test_storescu_sends_restored_totalseg_as_j2k(
    orthanc: peers.Orthanc, dcmtk: None, totalseg_series: list[Path]
) -> None:
    sent = peers.storescu("127.0.0.1", orthanc.dicom_port, totalseg_series, aec=orthanc.aet,
                          propose="j2k", required_only=True)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    ds = pydicom.dcmread(totalseg_series[0], stop_before_pixels=True)
    inst = orthanc.instances_of_study(ds.StudyInstanceUID)
    assert len(inst) == 20
    assert {i["transfer_syntax_uid"] for i in inst} == {pydicom.uid.JPEG2000Lossless}
