"""The bytes the receiver encodes itself for every instance are the libraries' bytes.

:mod:`dicom_ai.dicom.encoding` writes the stored file's File Meta Information and the C-STORE
response's command set directly, for speed; each must be byte-identical to what pydicom and
pynetdicom encode for the same values, and a real peer must read the response.
"""

from __future__ import annotations

import os
import time

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta

from dicom_ai.dicom.encoding import PREAMBLE, c_store_rsp_command, file_meta_bytes
from dicom_ai.receive.transport import AssociationSlots

CT = "1.2.840.10008.5.1.4.1.1.2"
# odd and even lengths, so both paddings are exercised (PS3.5 6.2: UI padded with NUL)
UIDS = ["1.2.3.4", "1.2.3.45", "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"]
SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.201"]


@pytest.mark.parametrize("instance", UIDS)
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_file_meta_is_pydicoms_encoding_of_pynetdicoms_file_meta(instance, syntax):
    ours = file_meta_bytes(CT, instance, syntax)
    theirs = encode_file_meta(create_file_meta(sop_class_uid=UID(CT), sop_instance_uid=UID(instance),
                                               transfer_syntax=UID(syntax)))
    assert ours == theirs
    ds = pydicom.dcmread(DicomBytesIO(PREAMBLE + ours), force=True)
    assert ds.file_meta.MediaStorageSOPInstanceUID == instance
    assert ds.file_meta.TransferSyntaxUID == syntax


@pytest.mark.parametrize("instance", UIDS)
@pytest.mark.parametrize(("message_id", "status"), [(1, 0x0000), (65535, 0xA900), (7, 0xC000), (300, 0xA700)])
def test_c_store_response_is_pynetdicoms_encoding(instance, message_id, status):
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert c_store_rsp_command(CT, instance, message_id, status) == encode(message.command_set, True, True)


def test_values_that_are_not_ascii_are_written_with_question_marks():
    assert b"1.2.?" in file_meta_bytes(CT, "1.2.é", "1.2.840.10008.1.2")


@pytest.mark.integration
def test_a_peer_reads_the_directly_encoded_responses(running_scp, lidc_series):
    """pynetdicom as the sender decodes each C-STORE-RSP: the status, the UIDs and the message
    ID it answers are those of its own request, for a success and for a refusal."""
    port = running_scp.settings.node.port
    good = pydicom.dcmread(lidc_series[0])
    bad = pydicom.dcmread(lidc_series[1])
    bad.PixelData = bad.PixelData[:1000]  # shorter than the Image Pixel Module says: 0xA900
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT, [good.file_meta.TransferSyntaxUID])
    sent: list[pydicom.Dataset] = []  # the requests' command sets, as the sender encoded them
    received: list[pydicom.Dataset] = []  # the responses' command sets, as it decoded them
    handlers = [(evt.EVT_DIMSE_SENT, lambda event: sent.append(event.message.command_set)),
                (evt.EVT_DIMSE_RECV, lambda event: received.append(event.message.command_set))]
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_AI", evt_handlers=handlers)
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in (good, bad)]
    finally:
        assoc.release()
    assert statuses == [0x0000, 0xA900]
    assert [int(r.Status) for r in received] == statuses
    for request, response, ds in zip(sent, received, (good, bad), strict=True):
        assert response.CommandField == 0x8001  # C-STORE-RSP
        assert response.MessageIDBeingRespondedTo == request.MessageID
        assert response.AffectedSOPInstanceUID == ds.SOPInstanceUID
        assert response.AffectedSOPClassUID == CT
        assert response.CommandDataSetType == 0x0101


@pytest.mark.integration
def test_associations_leave_no_descriptor_open(running_scp, lidc_series):
    """Each association's upper layer holds a socket pair to be woken by (LowLatencyDUL); it is
    closed when the association ends, so 20 associations leave the process's descriptors as
    they were."""
    port = running_scp.settings.node.port
    ds = pydicom.dcmread(lidc_series[0])
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT, [ds.file_meta.TransferSyntaxUID])

    def one() -> None:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_AI")
        assert assoc.is_established
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.release()

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    one()  # the index's connections, the flushing threads: opened once
    before = descriptors()
    for _ in range(20):
        one()
    deadline = 50
    while descriptors() > before and deadline:  # the last association's threads end
        deadline -= 1
        time.sleep(0.1)
    assert descriptors() <= before

def test_the_node_process_lets_an_idle_receiver_process_take_a_connection():
    """The node's own process (row 0) runs the scheduler and the web pages too: it counts half
    an association more than it holds, so a receiver process holding as many accepts first,
    and one holding more gives way to it."""
    slots = AssociationSlots(10, 10, processes=2)
    node, receiver = slots.for_process(0), slots.for_process(1)
    assert (node.lead(), receiver.lead()) == (0.5, 0)
    assert receiver.acquire("127.0.0.1") is None
    assert (node.lead(), receiver.lead()) == (0, 0.5)
    assert node.acquire("127.0.0.1") is None
    assert (node.lead(), receiver.lead()) == (0.5, 0)
    single = AssociationSlots(10, 10, processes=1)
    assert single.lead() == 0


def test_a_connection_counts_in_lead_from_its_accept_so_a_burst_spreads():
    """Connections accepted but not yet admitted count as the process's, so a burst of them is
    not all taken by the first process to wake; admitted (slot taken) or refused, they no
    longer count as arriving, and the limits count only admitted ones."""
    slots = AssociationSlots(10, 10, processes=2)
    node, receiver = slots.for_process(0), slots.for_process(1)
    receiver.arriving(+1)
    assert (node.lead(), receiver.lead()) == (0, 0.5)
    assert slots.open() == 0
    receiver.arriving(+1)
    assert (node.lead(), receiver.lead()) == (0, 1.5)
    assert receiver.acquire("127.0.0.1") is None  # admitted: the slot first, then ...
    receiver.arriving(-1)  # ... no longer arriving
    receiver.arriving(-1)  # the other one refused
    assert (node.lead(), receiver.lead()) == (0, 0.5)
    assert slots.open() == 1
    receiver.arriving(-1)  # never below none
    receiver.clear()
    assert (node.lead(), receiver.lead()) == (0.5, 0)
