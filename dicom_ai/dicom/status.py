"""DIMSE status codes the node answers or checks, by name.

Values from PS3.4 Annex B.2.3 (Storage Service Class statuses), PS3.4 C.4.1.1.4 (C-FIND pending)
and PS3.7 Annex C (the general status codes). An :class:`enum.IntEnum`: a member *is* its
number, so it goes wherever pynetdicom takes or gives a status, and ``0x%04X`` formats it.
"""

from __future__ import annotations

from enum import IntEnum


class DimseStatus(IntEnum):
    """A DIMSE response status."""

    #: PS3.7 C.1.1: the operation succeeded.
    SUCCESS = 0x0000
    #: PS3.7 C.4.2: a general processing failure (here: the instance could not be indexed).
    PROCESSING_FAILURE = 0x0110
    #: PS3.4 B.2.3: Refused, Out of Resources (too large, or too little disk left).
    OUT_OF_RESOURCES = 0xA700
    #: PS3.4 B.2.3: Error, Data Set does not match SOP Class.
    DATASET_MISMATCH = 0xA900
    #: PS3.4 B.2.3: Error, Cannot understand (the first of the 0xCxxx range).
    CANNOT_UNDERSTAND = 0xC000
    #: PS3.4 C.4.1.1.4: C-FIND pending, matches are continuing.
    PENDING = 0xFF00
    #: PS3.4 C.4.1.1.4: C-FIND pending, an optional key was not supported.
    PENDING_WARNING = 0xFF01
