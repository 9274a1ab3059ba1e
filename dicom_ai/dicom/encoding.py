"""The bytes the receiver makes for every instance while the sender waits, encoded directly.

* :func:`file_meta_bytes`: the File Meta Information a received data set is stored with
  (PS3.10 7.1). A C-STORE data set arrives without it; the stored file is the 128-byte
  preamble, ``DICM``, these elements and the data set exactly as received. They are the seven
  elements pynetdicom's ``Event.file_meta`` holds, as pydicom's ``write_file_meta_info``
  encodes them.
* :func:`c_store_rsp_command`: the command set of a C-STORE response (PS3.7 9.3.1.2), as
  pynetdicom's ``C_STORE_RSP`` message encodes it.

Both are byte-identical to the libraries' output (tested). They are written here because the
libraries' general element writer takes about 0.3 ms for the first and 0.6 ms for the second on
every instance, out of the 4 to 5 ms that Orthanc takes per instance on one association; these
take about 0.01 ms.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"  # PS3.10 7.1: 128-byte preamble and the DICM prefix


def _text(value: str, pad: bytes) -> bytes:
    """A text value as ASCII (``?`` for any other character), padded to an even length with
    ``pad`` (PS3.5 6.2: UI with NUL, SH with a space)."""
    raw = str(value).encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 2-byte length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """The encoded File Meta Information (group 0002, PS3.10 7.1) of a received data set.

    Elements, explicit VR little endian: (0002,0000) File Meta Information Group Length,
    (0002,0001) File Meta Information Version ``00 01``, (0002,0002) Media Storage SOP Class
    UID, (0002,0003) Media Storage SOP Instance UID (the C-STORE request's Affected SOP Class and
    Instance UIDs), (0002,0010) Transfer Syntax UID (the presentation context's), (0002,0012)
    Implementation Class UID and (0002,0013) Implementation Version Name (pynetdicom's).

    A value that is not ASCII is written with ``?`` in place of the other characters; whether
    a UID is valid is the caller's check (PS3.5 9.1).

    Raises
    ------
    struct.error
        If a value is longer than a 2-byte length allows (65,534 bytes).
    """
    body = b"".join((
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
        _element(0x0002, 0x0002, b"UI", _text(sop_class_uid, b"\x00")),
        _element(0x0002, 0x0003, b"UI", _text(sop_instance_uid, b"\x00")),
        _element(0x0002, 0x0010, b"UI", _text(transfer_syntax_uid, b"\x00")),
        _element(0x0002, 0x0012, b"UI", _text(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _element(0x0002, 0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    return struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def _command_element(element: int, value: bytes) -> bytes:
    """One group 0000 element, implicit VR little endian (PS3.7 6.3.1, PS3.5 7.1.3)."""
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def c_store_rsp_command(sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int) -> bytes:
    """The encoded command set of a C-STORE-RSP without a data set (PS3.7 9.3.1.2, Table
    9.3-2): (0000,0000) Command Group Length, (0000,0002) Affected SOP Class UID, (0000,0100)
    Command Field 0x8001, (0000,0120) Message ID Being Responded To, (0000,0800) Command Data Set
    Type 0x0101 (none), (0000,0900) Status, (0000,1000) Affected SOP Instance UID.

    Raises
    ------
    struct.error
        If ``message_id`` or ``status`` does not fit an unsigned 16-bit value.
    """
    body = b"".join((
        _command_element(0x0002, _text(sop_class_uid, b"\x00")),
        _command_element(0x0100, struct.pack("<H", 0x8001)),
        _command_element(0x0120, struct.pack("<H", message_id)),
        _command_element(0x0800, struct.pack("<H", 0x0101)),
        _command_element(0x0900, struct.pack("<H", status)),
        _command_element(0x1000, _text(sop_instance_uid, b"\x00")),
    ))
    return _command_element(0x0000, struct.pack("<L", len(body))) + body
