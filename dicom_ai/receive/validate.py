"""Checks a received data set must pass before it is acknowledged.

An instance is acknowledged only if its image can later be decoded, since a bad file must never
block the queue: native pixel data must have exactly the length the Image Pixel Module
(PS3.3 C.7.6.3) implies; encapsulated pixel data (PS3.5 A.4) must hold every frame, and each
frame's codestream must be whole and state the module's geometry in its header (PS3.5 8.2,
:mod:`dicom_ai.dicom.codestream`). Nothing is decoded while the association waits: corruption
inside entropy-coded data is found when the image is decoded.

Every byte is the sender's claim, so nothing is allocated from a claim before it is checked
against the bytes that came: a deflated data set (PS3.5 A.5) is inflated only up to the
instance limit, an element may not claim more bytes than follow it, and a frame's declared
size must fit both the limit and, for RLE (PS3.5 G), what its segments can expand to.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

import pydicom
from pydicom.filereader import read_dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, RLELossless

from dicom_ai.dicom.codestream import (
    CODESTREAM_SYNTAXES,
    CodestreamError,
    CodestreamMismatch,
    check_frame,
    encapsulated_frames,
)
from dicom_ai.dicom.status import DimseStatus

#: an RLE segment run of 2 bytes (header -127, one value) gives 128 bytes (PS3.5 G.3.1)
RLE_MAX_EXPANSION = 64
_UNDEFINED_LENGTH = 0xFFFFFFFF


class Refusal(Exception):
    """The data set is refused with a DIMSE ``status`` (PS3.4 B.2.3); the message says why."""

    def __init__(self, status: DimseStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_received(stream: bytes | memoryview, transfer_syntax: str, limit: int) -> pydicom.Dataset:
    """Parse a received data set, refusing one whose claims exceed the bytes that came.

    Parameters
    ----------
    stream:
        The data set as received (no File Meta Information), in ``transfer_syntax``.
    limit:
        The largest data set accepted, bytes; a deflated one is inflated only this far.

    Raises
    ------
    Refusal
        0xA700 when the inflated data set is larger than ``limit``; 0xC000 when the deflate
        stream is corrupt or an element claims more bytes than follow it.
    """
    ts = UID(transfer_syntax)
    if ts == DeflatedExplicitVRLittleEndian:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, RFC 1951 (PS3.5 A.5)
        try:
            inflated = inflate.decompress(stream, limit + 1)
        except zlib.error as exc:
            raise Refusal(DimseStatus.CANNOT_UNDERSTAND, f"deflated data set is corrupt: {exc}") from None
        if len(inflated) > limit or inflate.unconsumed_tail:
            raise Refusal(DimseStatus.OUT_OF_RESOURCES, f"deflated data set inflates to more than "
                          f"[node] max_instance_mb ({limit // 2**20} MiB)")
        ds = read_dataset(BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)
    else:
        ds = read_dataset(BytesIO(stream), is_implicit_VR=ts.is_implicit_VR,
                          is_little_endian=ts.is_little_endian)
    check_lengths(ds)
    return ds


def check_lengths(ds: pydicom.Dataset) -> None:
    """Raise :class:`Refusal` (0xC000) when a top-level element claims more bytes than it has:
    a value field is as long as its Value Length says (PS3.5 7.1.1), which a truncated or
    forged data set (e.g. a length of 0xFFFFFFF0 near the end) breaks."""
    for raw in ds._dict.values():
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if length in (None, _UNDEFINED_LENGTH) or not isinstance(value, bytes | bytearray):
            continue
        if len(value) < length:
            raise Refusal(DimseStatus.CANNOT_UNDERSTAND, f"element {raw.tag} claims {length} bytes, "
                          f"{len(value)} follow")


def _rle_segments_fit(frame: bytes, rows: int, cols: int, segments: int, number: int) -> None:
    """Raise :class:`Refusal` (0xA900) when an RLE frame's header (PS3.5 G.5: the number of
    segments and their 15 offsets) does not match the image, or a segment is too short to
    expand to ``rows x cols`` bytes."""
    if len(frame) < 64:
        raise Refusal(DimseStatus.DATASET_MISMATCH, f"RLE frame {number} is shorter than its 64-byte header")
    header = struct.unpack("<16L", frame[:64])
    if header[0] != segments:
        raise Refusal(DimseStatus.DATASET_MISMATCH, f"RLE frame {number} has {header[0]} segments, "
                      f"{segments} expected for the Image Pixel Module")
    offsets = list(header[1 : 1 + segments]) + [len(frame)]
    for k in range(segments):
        length = offsets[k + 1] - offsets[k]
        if offsets[k] < 64 or length <= 0:
            raise Refusal(DimseStatus.DATASET_MISMATCH, f"RLE frame {number}: segment {k + 1} offsets "
                          "are out of order")
        if rows * cols > RLE_MAX_EXPANSION * length + 128:
            raise Refusal(DimseStatus.DATASET_MISMATCH, f"RLE frame {number}: segment {k + 1} has "
                          f"{length} bytes, too few for {rows}x{cols} pixels")


def check_pixel_data(ds: pydicom.Dataset, transfer_syntax: str, limit: int | None = None) -> None:
    """Raise :class:`Refusal` when the pixel data of ``ds`` cannot be decoded later.

    Native pixel data must be as long as the Image Pixel Module (PS3.3 C.7.6.3) implies.
    Encapsulated pixel data (PS3.5 A.4) must split into Number of Frames frames, its Basic or
    Extended Offset Table agreeing (:func:`dicom_ai.dicom.codestream.encapsulated_frames`);
    every JPEG, JPEG-LS, JPEG 2000 or HTJ2K frame must start and end with its codestream's
    markers and state the data set's Rows, Columns and Samples per Pixel, at a precision that
    fits Bits Allocated (:func:`dicom_ai.dicom.codestream.check_frame`, PS3.5 8.2); every RLE
    frame's header must fit the image (PS3.5 G.5). Nothing is decoded: corruption inside
    entropy-coded data is found only when the image is decoded.

    Parameters
    ----------
    ds:
        The complete data set as received (with Pixel Data).
    transfer_syntax:
        The presentation context's transfer syntax UID.
    limit:
        The largest decoded frame accepted, bytes; None: no limit.

    Raises
    ------
    Refusal
        0xA900 when the pixel data does not match the Image Pixel Module (its length, the
        number of frames, a codestream header's geometry); 0xA700 when a frame would decode to
        more than ``limit`` bytes; 0xC000 when the encapsulation or a codestream is malformed
        (no SOI/SOC or EOI/EOC marker, a truncated or garbled marker segment) or no decoder
        reads the transfer syntax.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return
        raise Refusal(DimseStatus.DATASET_MISMATCH, "image storage data set without Pixel Data (7FE0,0010)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise Refusal(DimseStatus.DATASET_MISMATCH, f"Image Pixel Module incomplete: {exc}") from None
    ts = UID(transfer_syntax)
    data = ds.PixelData
    if not ts.is_encapsulated:
        expected = (rows * cols * samples * frames * bits + 7) // 8
        if len(data) < expected:
            raise Refusal(
                DimseStatus.DATASET_MISMATCH,
                f"Pixel Data has {len(data)} bytes, {expected} expected for {frames} frame(s) of "
                f"{rows}x{cols}x{samples} at {bits} bits",
            )
        return
    frame_bytes = (rows * cols * samples * bits + 7) // 8
    if limit is not None and frame_bytes > limit:
        raise Refusal(DimseStatus.OUT_OF_RESOURCES, f"a {rows}x{cols}x{samples} frame at {bits} bits "
                      f"({frame_bytes // 2**20} MiB) exceeds [node] max_instance_mb")
    if ts != RLELossless and ts not in CODESTREAM_SYNTAXES:
        raise Refusal(DimseStatus.CANNOT_UNDERSTAND, f"encapsulated Pixel Data in {ts.name} is not checked")
    try:
        available = get_decoder(ts).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise Refusal(DimseStatus.CANNOT_UNDERSTAND, f"no installed decoder reads {ts.name}")
    extended = None
    if "ExtendedOffsetTable" in ds:
        extended = (bytes(ds.ExtendedOffsetTable), bytes(ds.get("ExtendedOffsetTableLengths") or b""))
    number = 0
    try:
        for number, frame in enumerate(encapsulated_frames(data, frames, extended), 1):
            if ts == RLELossless:
                _rle_segments_fit(frame, rows, cols, samples * ((bits + 7) // 8), number)
            else:
                check_frame(frame, ts, rows=rows, columns=cols, samples=samples, bits_allocated=bits)
    except CodestreamMismatch as exc:
        where = f"frame {number}: " if number else ""
        raise Refusal(DimseStatus.DATASET_MISMATCH, f"{ts.name} {where}{exc}") from None
    except CodestreamError as exc:
        where = f"frame {number}: " if number else ""
        raise Refusal(DimseStatus.CANNOT_UNDERSTAND, f"{ts.name} {where}{exc}") from None
