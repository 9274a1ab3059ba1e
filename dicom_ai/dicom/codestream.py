"""Encapsulated Pixel Data checked from its items, headers and markers, never decoded.

An encapsulated Pixel Data element (PS3.5 A.4) holds a Basic Offset Table item and one or more
fragment items; every frame is one codestream made of one or more fragments (PS3.5 A.4, Table
A.4-1; with an Extended Offset Table, PS3.3 C.7.6.3.1.8, one fragment per frame). Each
codestream states its own geometry in a header ahead of the entropy-coded data:

- JPEG (ITU-T T.81 | ISO/IEC 10918-1, PS3.5 8.2.1, A.4.1): SOI, marker segments (B.1.1.4), a
  frame header SOFn (B.2.2: precision P, lines Y, samples per line X, components Nf), scans
  (SOS, B.2.3) and EOI;
- JPEG-LS (ITU-T T.87 | ISO/IEC 14495-1, PS3.5 8.2.3, A.4.3): the same marker syntax with the
  frame header SOF55 (FFF7, C.2.2) and the LSE preset parameters segment (FFF8, C.2.4.1);
- JPEG 2000 (ITU-T T.800 | ISO/IEC 15444-1, PS3.5 8.2.4, A.4.4) and High-Throughput JPEG 2000
  (ISO/IEC 15444-15, PS3.5 8.2 and A.4): SOC, the image and tile size segment SIZ (A.5.1),
  the rest of the main header, tile-parts (SOT, A.4.2) and EOC (FFD9).

Nothing here reads entropy-coded data, so corruption inside it is not found; a missing start
or end marker (a truncated stream), a garbled marker segment and a header that disagrees with
the Image Pixel Module (PS3.3 C.7.6.3) are. :class:`CodestreamError` says the stream or its
encapsulation cannot be understood; :class:`CodestreamMismatch` says a well-formed stream does
not match the data set's attributes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

import openjpeg
from pydicom.encaps import generate_frames, parse_basic_offsets, parse_fragments
from pydicom.uid import (
    JPEG2000MC,
    UID,
    JPEG2000MCLossless,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

#: transfer syntaxes whose frames are ITU-T T.81 codestreams (PS3.5 A.4.1)
JPEG_SYNTAXES = frozenset(JPEGTransferSyntaxes)  # baseline, extended, lossless, lossless SV1
#: transfer syntaxes whose frames are ITU-T T.87 codestreams (PS3.5 A.4.3)
JPEG_LS_SYNTAXES = frozenset(JPEGLSTransferSyntaxes)  # lossless, near-lossless
#: transfer syntaxes whose frames are ISO/IEC 15444-1 or -15 codestreams (PS3.5 A.4.4 and the HTJ2K syntaxes of A.4)
#: (not the Part 2 multi-component syntaxes, whose codestreams this module does not read)
J2K_SYNTAXES = frozenset(JPEG2000TransferSyntaxes) - {JPEG2000MCLossless, JPEG2000MC}
#: every transfer syntax :func:`check_frame` reads
CODESTREAM_SYNTAXES = JPEG_SYNTAXES | JPEG_LS_SYNTAXES | J2K_SYNTAXES

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
#: T.81 Table B.1: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
_T81_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: T.87 C.1, Table C.1: start of frame, JPEG-LS
_SOF55 = 0xF7
#: markers that stand alone, without a length (T.81 B.1.1.3: SOI, EOI, RSTm, TEM)
_STANDALONE = frozenset({0x01, _SOI, _EOI, *range(0xD0, 0xD8)})
_SOC = b"\xff\x4f"
_SIZ, _SOT = 0xFF51, 0xFF90
#: JPEG 2000 signature box (ISO/IEC 15444-1 I.5.1), and the contiguous codestream box type (I.5.4)
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_JP2C = b"jp2c"
_ITEM = 0xFFFEE000


class CodestreamError(ValueError):
    """The encapsulated Pixel Data or a frame's codestream is malformed: a missing SOI/SOC or
    EOI/EOC marker (a truncated stream), a marker segment that is garbled or runs past the
    end, or items that do not follow PS3.5 A.4."""


class CodestreamMismatch(ValueError):
    """A well-formed codestream or encapsulation disagrees with the data set: its header's
    geometry with the Image Pixel Module (PS3.3 C.7.6.3), or its frame count with Number of
    Frames (0028,0008)."""


@dataclass(frozen=True)
class FrameHeader:
    """The geometry a frame's codestream header states.

    ``marker`` names the header read (``"SOF3"``, ``"SOF55"``, ``"SIZ"``); ``rows`` and
    ``columns`` are in pixels, ``samples`` is the number of components and ``precision`` the
    largest component precision, bits. ``rows`` is 0 when a T.81 frame header leaves the
    number of lines to a DNL segment that is absent (T.81 B.2.5).
    """

    marker: str
    rows: int
    columns: int
    samples: int
    precision: int


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def _trim_padding(frame: bytes) -> bytes:
    """The codestream without the one byte that pads an odd-length stream to an even-length
    item (PS3.5 A.4: items have even length); senders pad with 00 or FF."""
    if len(frame) % 2 == 0 and len(frame) >= 3 and frame[-3:-1] == b"\xff\xd9" and frame[-1] in (0x00, 0xFF):
        return frame[:-1]
    return frame


def jpeg_header(frame: bytes) -> FrameHeader:
    """Read the frame header of a JPEG (ITU-T T.81) or JPEG-LS (ITU-T T.87) codestream.

    The stream must start with SOI (FFD8) and end with EOI (FFD9, then at most one padding
    byte, PS3.5 A.4); the marker segments from SOI to the first scan header SOS (T.81 B.1.1.4,
    B.2; T.87 C.2) must each fit in the stream and one of them must be a frame header: SOF0 to
    SOF15 except C4, C8 and CC (T.81 Table B.1) or SOF55 (FFF7, T.87 Table C.1). Fill bytes FF
    before a marker are allowed (T.81 B.1.1.2). Entropy-coded data after SOS is not read,
    except to find a DNL segment (FFDC, T.81 B.2.5) when the frame header gives 0 lines: byte
    stuffing (T.81 B.1.1.5, T.87 A.1) keeps FFDC out of entropy-coded data.

    Parameters
    ----------
    frame:
        One frame's codestream, as the fragments of its item(s) joined.

    Returns
    -------
    FrameHeader
        ``marker`` is ``"SOF<n>"``, n the marker's low byte minus C0 (so SOF55 for JPEG-LS).

    Raises
    ------
    CodestreamError
        No SOI at the start or EOI at the end, a marker segment garbled or cut short, or no
        frame header or scan header before the end.
    """
    if frame[:2] != b"\xff\xd8":
        raise CodestreamError(f"no SOI marker (FFD8) at the start, found {frame[:2].hex().upper() or 'nothing'}")
    stream = _trim_padding(frame)
    if stream[-2:] != b"\xff\xd9":
        raise CodestreamError(f"no EOI marker (FFD9) at the end of {len(frame)} bytes: the stream is truncated")
    end = len(stream) - 2  # the offset of EOI: every marker segment ends before it
    at = 2
    header: FrameHeader | None = None
    while True:
        if at >= end:
            raise CodestreamError("the stream ends before its scan header SOS")
        if stream[at] != 0xFF:
            raise CodestreamError(f"garbled marker at byte {at}: {stream[at:at + 2].hex().upper()}")
        while at < end and stream[at] == 0xFF:  # fill bytes
            at += 1
        if at >= end:
            raise CodestreamError("the stream ends in fill bytes before its scan header SOS")
        code = stream[at]
        at += 1
        if code == 0x00 or code in _STANDALONE:
            raise CodestreamError(f"unexpected marker FF{code:02X} at byte {at - 2} before the scan header SOS")
        if at + 2 > end:
            raise CodestreamError(f"marker segment FF{code:02X} at byte {at - 2} is cut short")
        length = _u16(stream, at)
        if length < 2 or at + length > end:
            raise CodestreamError(f"marker segment FF{code:02X} at byte {at - 2} claims {length} bytes, "
                                  f"{end - at} follow before EOI")
        if code in _T81_SOF or code == _SOF55:
            if header is not None:
                raise CodestreamError(f"a second frame header FF{code:02X} at byte {at - 2}")
            if length < 8:
                raise CodestreamError(f"frame header FF{code:02X} is {length} bytes, at least 8 expected")
            components = stream[at + 7]
            if length != 8 + 3 * components:
                raise CodestreamError(f"frame header FF{code:02X} is {length} bytes, {8 + 3 * components} "
                                      f"expected for {components} components")
            header = FrameHeader(f"SOF{code - 0xC0}", _u16(stream, at + 3), _u16(stream, at + 5),
                                 components, stream[at + 2])
        elif code == _SOS:
            if header is None:
                raise CodestreamError(f"scan header SOS at byte {at - 2} before any frame header")
            if header.rows == 0:  # number of lines from the DNL segment (T.81 B.2.5)
                dnl = stream.find(b"\xff\xdc", at + length)
                if dnl > 0 and dnl + 6 <= end:
                    return FrameHeader(header.marker, _u16(stream, dnl + 4), header.columns, header.samples,
                                       header.precision)
            return header
        at += length


def j2k_header(frame: bytes) -> FrameHeader:
    """Read the image and tile size segment SIZ of a JPEG 2000 codestream (ISO/IEC 15444-1,
    or 15444-15 for HTJ2K, which keeps the Part 1 codestream syntax).

    The stream must start with SOC (FF4F) and end with EOC (FFD9, then at most one padding
    byte, PS3.5 A.4). Its main header (A.4, A.5, A.6) is read by OpenJPEG's header reader
    (``openjpeg.get_parameters``: it stops at the first SOT and decodes nothing); then the
    tile-parts are walked by their SOT segments (A.4.2: Psot is the length of the tile-part
    from its SOT, 0 only for the last one), so a stream cut inside a tile-part is found even
    when it ends in bytes that look like EOC. A stream wrapped in the JP2 file format (a
    signature box, I.5.1), which PS3.5 A.4.4 does not allow but which decoders read, is checked
    on the codestream of its contiguous codestream box (I.5.4).

    Parameters
    ----------
    frame:
        The bytes of one frame (its fragments joined, PS3.5 A.4), starting at SOC or at a JP2
        signature box.

    Returns
    -------
    FrameHeader
        ``marker`` is ``"SIZ"``; ``rows`` is Ysiz - YOsiz, ``columns`` Xsiz - XOsiz (the image
        area, B.2), ``samples`` Csiz, ``precision`` the largest (Ssiz & 7F) + 1.

    Raises
    ------
    CodestreamError
        No SOC at the start or EOC at the end, a main header that does not parse, or a
        tile-part that runs past the end of the stream.
    """
    stream = frame
    if stream[:12] == _JP2_SIGNATURE:
        stream = _jp2_codestream(stream)
    if stream[:2] != _SOC:
        raise CodestreamError(f"no SOC marker (FF4F) at the start, found {stream[:2].hex().upper() or 'nothing'}")
    stream = _trim_padding(stream)
    if stream[-2:] != b"\xff\xd9":
        raise CodestreamError(f"no EOC marker (FFD9) at the end of {len(frame)} bytes: the stream is truncated")
    if len(stream) < 4 or _u16(stream, 2) != _SIZ:
        raise CodestreamError("no SIZ marker segment (FF51) after SOC (ISO/IEC 15444-1 A.5.1)")
    try:
        params = openjpeg.get_parameters(stream, 0)
    except (RuntimeError, ValueError) as exc:
        raise CodestreamError(f"the main header does not parse: {exc}") from None
    end = len(stream) - 2  # the offset of EOC
    at = 4 + _u16(stream, 4)  # after SIZ: the other main header segments, then the first SOT
    while at < end and _u16(stream, at) != _SOT:
        if stream[at] != 0xFF or at + 4 > end or _u16(stream, at + 2) < 2:
            raise CodestreamError(f"garbled main header marker at byte {at}: {stream[at:at + 4].hex().upper()}")
        at += 2 + _u16(stream, at + 2)
    if at >= end:
        raise CodestreamError("no tile-part (SOT, FF90) before EOC")
    while at < end:
        if at + 12 > end or _u16(stream, at) != _SOT:
            raise CodestreamError(f"garbled tile-part header at byte {at}: expected SOT (FF90), found "
                                  f"{stream[at:at + 2].hex().upper()}")
        psot = int.from_bytes(stream[at + 6 : at + 10], "big")
        if psot == 0:  # the last tile-part runs to EOC
            break
        if psot < 14 or at + psot > end:
            raise CodestreamError(f"tile-part at byte {at} claims {psot} bytes, {end - at} follow before EOC: "
                                  "the stream is truncated")
        at += psot
    precision = max((s & 0x7F) + 1 for s in stream[4 + 38 : 4 + 38 + 3 * int(params["samples_per_pixel"]) : 3])
    return FrameHeader("SIZ", int(params["rows"]), int(params["columns"]), int(params["samples_per_pixel"]),
                       precision)


def _jp2_codestream(data: bytes) -> bytes:
    """The contents of the contiguous codestream box of a JP2 file (ISO/IEC 15444-1 I.4, I.5.4):
    boxes are LBox (4 bytes, 1: an 8-byte XLBox follows, 0: to the end), TBox (4), contents."""
    at = 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[at + 8 : at + 16], "big"), 16
        elif size == 0:
            size = len(data) - at
        if size < header:
            break
        if kind == _JP2C:
            return data[at + header : at + size]
        at += size
    raise CodestreamError("JP2 file without a contiguous codestream box (jp2c)")


def check_frame(frame: bytes, transfer_syntax: str, *, rows: int, columns: int, samples: int,
                bits_allocated: int) -> FrameHeader:
    """Check one frame's codestream header against the Image Pixel Module (PS3.3 C.7.6.3).

    Rows, Columns and Samples per Pixel must equal the header's lines, samples per line and
    components (PS3.5 8.2.1, 8.2.3, 8.2.4). The precision is only bounded, by Bits Allocated
    (a 1-bit image, Bits Allocated 1, may be coded at up to 8 bits): decoded samples wider than
    Bits Allocated could not be stored. It is not compared with Bits Stored, because real
    encoders disagree with it both ways and decoders read them: DCMTK codes the 12-bit CT of
    the demo series and of several JPEG-LS and JPEG 2000 files at 16 bits (Bits Stored 12),
    and an OsiriX JPEG 2000 file declares Bits Stored 16 over an 11-bit stream.

    Parameters
    ----------
    frame:
        One frame's codestream (see :func:`encapsulated_frames`).
    transfer_syntax:
        The transfer syntax UID; one of :data:`CODESTREAM_SYNTAXES`.
    rows, columns, samples, bits_allocated:
        Rows (0028,0010), Columns (0028,0011), Samples per Pixel (0028,0002) and Bits Allocated
        (0028,0100) of the data set.

    Returns
    -------
    FrameHeader
        The header read.

    Raises
    ------
    CodestreamError
        The codestream is malformed (see :func:`jpeg_header`, :func:`j2k_header`).
    CodestreamMismatch
        The header disagrees with the attributes, or it is of another standard than the
        transfer syntax names (a JPEG-LS frame header under a JPEG transfer syntax or the
        reverse, PS3.5 A.4.1, A.4.3).
    ValueError
        ``transfer_syntax`` is not one of :data:`CODESTREAM_SYNTAXES`.
    """
    ts = UID(transfer_syntax)
    if ts in J2K_SYNTAXES:
        header = j2k_header(frame)
    elif ts in JPEG_SYNTAXES or ts in JPEG_LS_SYNTAXES:
        header = jpeg_header(frame)
        if (header.marker == "SOF55") != (ts in JPEG_LS_SYNTAXES):
            raise CodestreamMismatch(f"a {header.marker} frame header under {ts.name}")
    else:
        raise ValueError(f"{ts.name} frames are not read by their markers")
    wrong = [f"{name} {value} (header {stated})" for name, value, stated in (
        ("Rows", rows, header.rows), ("Columns", columns, header.columns),
        ("Samples per Pixel", samples, header.samples)) if value != stated]
    if header.precision > max(bits_allocated, 8):
        wrong.append(f"Bits Allocated {bits_allocated} (header precision {header.precision})")
    if wrong:
        raise CodestreamMismatch(f"{header.marker} header disagrees with " + ", ".join(wrong))
    return header


def encapsulated_frames(pixel_data: bytes, number_of_frames: int,
                        extended_offsets: tuple[bytes, bytes] | None = None) -> Iterator[bytes]:
    """Split encapsulated Pixel Data into its frames, checking its items (PS3.5 A.4).

    The value must be a Basic Offset Table item and fragment items (tag FFFE,E000), each
    fragment wholly inside the value. A non-empty Basic Offset Table must hold one offset per
    frame, the first 0, each the start of a fragment item, increasing (PS3.5 A.4, Table A.4-1).
    An Extended Offset Table (PS3.3 C.7.6.3.1.8) needs an empty Basic Offset Table and one
    offset and length per frame, each the start and length of one fragment. Without either
    table, frames are one fragment each when there are as many fragments as frames, all
    fragments when there is one frame, and otherwise end at the fragments that end in an
    EOI/EOC marker (as ``pydicom.encaps.generate_frames`` splits them).

    Parameters
    ----------
    pixel_data:
        The value of Pixel Data (7FE0,0010), little endian (every encapsulated transfer syntax).
    number_of_frames:
        Number of Frames (0028,0008), 1 when absent.
    extended_offsets:
        The values of Extended Offset Table (7FE0,0001) and Extended Offset Table Lengths
        (7FE0,0002), 8-byte unsigned integers, or None when absent.

    Yields
    ------
    bytes
        The ``number_of_frames`` codestreams in order, each its fragments joined; one at a time,
        so that only one frame is copied out of ``pixel_data`` at once. The items are checked
        before the first is yielded, the number of frames as they are.

    Raises
    ------
    CodestreamError
        Items that are not fragment items, a fragment that runs past the end, offsets that do
        not point at fragment items, an Extended Offset Table with a non-empty Basic Offset
        Table or without its lengths.
    CodestreamMismatch
        A Basic or Extended Offset Table with another number of entries than
        ``number_of_frames``, or fewer or more frames than ``number_of_frames``.
    """
    buffer = BytesIO(pixel_data)
    try:
        basic = parse_basic_offsets(buffer)
        count, positions = parse_fragments(buffer)
    except (ValueError, struct.error) as exc:
        raise CodestreamError(f"encapsulated Pixel Data is malformed: {exc}") from None
    starts = {}
    for k, at in enumerate(positions):
        length = int.from_bytes(pixel_data[at + 4 : at + 8], "little")
        if at + 8 + length > len(pixel_data):
            raise CodestreamError(f"fragment {k + 1} claims {length} bytes, {len(pixel_data) - at - 8} follow")
        starts[at - positions[0]] = length
    if count == 0:
        raise CodestreamError("encapsulated Pixel Data holds no fragment")
    if extended_offsets is not None:
        yield from _extended_frames(pixel_data, positions[0], starts, number_of_frames, extended_offsets, basic)
        return
    if basic:
        if len(basic) != number_of_frames:
            raise CodestreamMismatch(f"the Basic Offset Table has {len(basic)} entries for "
                                     f"{number_of_frames} frame(s)")
        if basic[0] != 0 or any(b <= a for a, b in zip(basic, basic[1:], strict=False)):
            raise CodestreamError("the Basic Offset Table's offsets do not start at 0 and increase")
        stray = [offset for offset in basic if offset not in starts]
        if stray:
            raise CodestreamError(f"the Basic Offset Table's offset {stray[0]} is not the start of a fragment")
    elif count < number_of_frames:
        raise CodestreamMismatch(f"{count} fragment(s) for {number_of_frames} frames")
    found = 0
    try:
        for frame in generate_frames(pixel_data, number_of_frames=number_of_frames):
            found += 1
            if found > number_of_frames:
                break
            yield frame
    except (ValueError, struct.error) as exc:
        raise CodestreamError(f"encapsulated Pixel Data is malformed: {exc}") from None
    if found > number_of_frames:
        raise CodestreamMismatch(f"more than {number_of_frames} encoded frame(s) for {number_of_frames} frames")
    if found < number_of_frames:
        raise CodestreamMismatch(f"{found} encoded frame(s) for {number_of_frames} frames")


def _extended_frames(pixel_data: bytes, first: int, starts: dict[int, int], number_of_frames: int,
                     extended_offsets: tuple[bytes, bytes], basic: list[int]) -> Iterator[bytes]:
    offsets_raw, lengths_raw = extended_offsets
    if basic:
        raise CodestreamError("an Extended Offset Table with a non-empty Basic Offset Table")
    if len(offsets_raw) % 8 or len(lengths_raw) != len(offsets_raw):
        raise CodestreamError(f"the Extended Offset Table has {len(offsets_raw)} bytes and its lengths "
                              f"{len(lengths_raw)}: 8 bytes per frame each")
    offsets = struct.unpack(f"<{len(offsets_raw) // 8}Q", offsets_raw)
    lengths = struct.unpack(f"<{len(lengths_raw) // 8}Q", lengths_raw)
    if len(offsets) != number_of_frames:
        raise CodestreamMismatch(f"the Extended Offset Table has {len(offsets)} entries for "
                                 f"{number_of_frames} frame(s)")
    for k, (offset, length) in enumerate(zip(offsets, lengths, strict=True)):
        if starts.get(offset) != length:
            raise CodestreamError(f"the Extended Offset Table's frame {k + 1} (offset {offset}, length "
                                  f"{length}) is not one fragment")
        at = first + offset + 8
        yield pixel_data[at : at + length]
