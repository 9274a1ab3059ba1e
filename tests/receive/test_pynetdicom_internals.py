"""The private pynetdicom attributes the receiver's transport relies on still exist.

``dicom_ai.receive`` subclasses pynetdicom's DUL and DIMSE providers and its association server
to wake on what they wait for, bound PDUs and messages, encode C-STORE responses directly, and end associations at stop. Each of them reaches
into a name pynetdicom does not promise to keep. A pynetdicom upgrade that renames one must
fail here, loudly and by name, rather than as a hang or a silent fallback in a network test.
"""

from __future__ import annotations

import inspect

import pytest
from pynetdicom import AE, dsutils
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

#: (owner, attribute, what it is used for)
METHODS = [
    (DULServiceProvider, "send_pdu", "LowLatencyDUL: waking the reactor to send"),
    (DULServiceProvider, "_read_pdu_data", "LowLatencyDUL: the bounded PDU reader"),
    (DULServiceProvider, "_decode_pdu", "read_pdu: PDU bytes to (pdu, event)"),
    (DULServiceProvider, "kill_dul", "ending an association at stop"),
    (DIMSEServiceProvider, "receive_primitive", "WaitingDIMSE: bounded data sets"),
    (DIMSEServiceProvider, "get_msg", "WaitingDIMSE: waiting on the message queue"),
    (DIMSEMessage, "decode_msg", "gathering fragments in BoundedBuffer"),
    (RequestHandler, "_create_association", "AssociationServer: the admitted connection"),
    (ThreadedAssociationServer, "shutdown", "AssociationServer.shutdown"),
    (DULServiceProvider, "run", "LowLatencyDUL: closing its waker as the thread ends"),
    (DIMSEServiceProvider, "send_msg", "WaitingDIMSE: the C-STORE response encoded directly"),
    (dsutils, "encode_file_meta", "the reference dicom_ai.dicom.encoding is tested against"),
]


@pytest.mark.parametrize(("owner", "name", "use"), METHODS, ids=[f"{o.__name__}.{n}" for o, n, _ in METHODS])
def test_methods_the_transport_overrides_or_calls_exist(owner, name, use):
    assert callable(getattr(owner, name, None)), f"pynetdicom {owner.__name__}.{name} is gone ({use})"


def test_instance_attributes_set_by_pynetdicom_constructors_exist():
    ae = AE()
    assert isinstance(ae._servers, list), "AE._servers (servers ae.shutdown() ends)"
    assoc = Association(ae, "acceptor")
    for name in ("_kill", "_reactor_checkpoint"):
        assert hasattr(assoc, name), f"Association.{name} (forced end at stop)"
    dul = assoc.dul
    for name in ("event_queue", "_recv_pdu", "socket"):
        assert hasattr(dul, name), f"DULServiceProvider.{name}"
    assert "_run_loop_delay" in vars(dul) or hasattr(type(dul), "_run_loop_delay"), \
        "DULServiceProvider._run_loop_delay (LowLatencyDUL waits in its read)"
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(DULServiceProvider.run_reactor), \
        "the DUL reactor no longer sleeps _run_loop_delay when idle (LowLatencyDUL waits there)"
    assert "self.dimse.send_msg(rsp" in inspect.getsource(StorageServiceClass.SCP), \
        "the Storage SCP no longer sends its response with DIMSE send_msg (WaitingDIMSE's fast path)"
    dimse = assoc.dimse
    assert hasattr(dimse, "msg_queue") and hasattr(dimse, "message"), "DIMSEServiceProvider.msg_queue / message"
    message = DIMSEMessage()
    for name in ("data_set", "encoded_command_set", "_data_set_file", "_data_set_path"):
        assert hasattr(message, name), f"DIMSEMessage.{name}"
    source = inspect.getsource(DIMSEServiceProvider.receive_primitive)
    assert "if self.message is None" in source and "DIMSEMessage()" in source, \
        "receive_primitive no longer creates its message only when none is open (WaitingDIMSE's hook)"
