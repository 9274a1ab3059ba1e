"""Encapsulated Pixel Data checked by its items, headers and markers, without decoding.

Real files of ../shared/data/edge_cases and the demo series, and real encoders (Pillow's JPEG
baseline, OpenJPEG's JP2), altered the way a broken sender or link alters them: cut inside the
last frame, EOI/EOC or SOI/SOC lost, marker segments garbled, Image Pixel Module attributes that
disagree with the stream, frames, fragments and offset tables that disagree with Number of
Frames. No network: :func:`check_pixel_data` is called as the C-STORE handler calls it.
"""

from __future__ import annotations

import copy
import io
import struct

import numpy as np
import openjpeg.utils
import peers
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, encapsulate_extended, parse_basic_offsets
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_ai.dicom import codestream
from dicom_ai.dicom.status import DimseStatus
from dicom_ai.receive.validate import Refusal, check_pixel_data

EDGE = peers.SHARED_DATA / "edge_cases"
DEMO = peers.REPO_ROOT / "demo" / "ct_chest_LIDC-IDRI-0314" / "image"
LIMIT = 256 * 2**20
MISMATCH, NOT_UNDERSTOOD = DimseStatus.DATASET_MISMATCH, DimseStatus.CANNOT_UNDERSTAND

#: one real file per compressed transfer syntax of the edge-case set and the demo
REAL = {
    JPEGExtended12Bit: "pylibjpeg-data/JPEGExtended_JPEGExtended_1s_1f_u_16_12.dcm",
    JPEGLossless: "pylibjpeg-data/JPEGLossless_JPEGLossless_1s_1f_u_16_12.dcm",
    JPEGLosslessSV1: "dcm_qa_ts/In/5.dcm",
    JPEGLSLossless: "demo",
    JPEGLSNearLossless: "pylibjpeg-data/JPEGLS_CT1_JLSN.dcm",
    JPEG2000Lossless: "pydicom-data/693_J2KR.dcm",
    JPEG2000: "fo-dicom/CT1_J2KI",
}
#: the multi-frame files (10 frames of 64x64, no Basic Offset Table)
MULTI = {
    JPEG2000Lossless: "pydicom-data/emri_small_jpeg_2k_lossless.dcm",
    JPEGLSLossless: "pydicom-data/emri_small_jpeg_ls_lossless.dcm",
}
#: edge cases whose pixel data a correct header check refuses, and why
REFUSED = {
    "pydicom-wheel/JPEG2000-embedded-sequence-delimiter.dcm": NOT_UNDERSTOOD,  # SIZ garbled
    "pydicom-data/liver_rle.dcm": MISMATCH,  # RLE segments too short for the image (PS3.5 G.5)
    "pydicom-data/liver_nonbyte_aligned_rle.dcm": MISMATCH,
}


def _read(name: str) -> pydicom.Dataset:
    if not peers.SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {peers.SHARED_DATA}")
    return pydicom.dcmread(sorted(DEMO.glob("*.dcm"))[137] if name == "demo" else EDGE / name)


def _frames(ds: pydicom.Dataset) -> list[bytes]:
    return list(codestream.encapsulated_frames(ds.PixelData, int(ds.get("NumberOfFrames", 1) or 1)))


def _with(ds: pydicom.Dataset, frames: list[bytes], *, ts: str | None = None, bot: bool = False,
          fragments: int = 1, **attributes: object) -> pydicom.Dataset:
    """A copy of ``ds`` whose Pixel Data holds ``frames`` (each in ``fragments`` items)."""
    out = copy.deepcopy(ds)
    out.PixelData = encapsulate(frames, fragments_per_frame=fragments, has_bot=bot)
    out["PixelData"].is_undefined_length = True
    if len(frames) > 1 or "NumberOfFrames" in ds:
        out.NumberOfFrames = len(frames)
    if ts is not None:
        out.file_meta.TransferSyntaxUID = ts
    for keyword, value in attributes.items():
        setattr(out, keyword, value)
    return out


def _status(ds: pydicom.Dataset) -> int | None:
    """The refusal's status, None when accepted."""
    try:
        check_pixel_data(ds, ds.file_meta.TransferSyntaxUID, LIMIT)
    except Refusal as refusal:
        return int(refusal.status)
    return None


def _refusal(ds: pydicom.Dataset) -> Refusal:
    with pytest.raises(Refusal) as info:
        check_pixel_data(ds, ds.file_meta.TransferSyntaxUID, LIMIT)
    return info.value


def _header_end(frame: bytes, ts: str) -> int:
    """The offset just past the codestream header: the end of SOS (T.81, T.87) or the first SOT."""
    at, last = 2, b"\xff\x90" if UID(ts) in codestream.J2K_SYNTAXES else b"\xff\xda"
    while frame[at : at + 2] != last:
        at += 2 + int.from_bytes(frame[at + 2 : at + 4], "big")
    return at if last == b"\xff\x90" else at + 2 + int.from_bytes(frame[at + 2 : at + 4], "big")


def _baseline(rgb: bool = False) -> tuple[pydicom.Dataset, list[bytes]]:
    """A JPEG baseline (SOF0) data set encoded by Pillow from a real 8-bit image."""
    src = _read("pydicom-data/JPGLosslessP14SV1_1s_1f_8b.dcm")
    pixels = src.pixel_array
    image = Image.fromarray(np.stack([pixels] * 3, -1) if rgb else pixels)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, subsampling=1)  # 4:2:2 when in colour: YBR_FULL_422
    attributes: dict[str, object] = {"SamplesPerPixel": 3, "PhotometricInterpretation": "YBR_FULL_422",
                                     "PlanarConfiguration": 0} if rgb else {}
    return _with(src, [buffer.getvalue()], ts=JPEGBaseline8Bit, **attributes), [buffer.getvalue()]


def _sample(ts: str) -> tuple[pydicom.Dataset, list[bytes]]:
    """A real data set in ``ts`` and its frames; the HTJ2K syntaxes carry a real Part 1 stream
    (15444-15 keeps its markers and SIZ; no HTJ2K encoder is installed)."""
    if ts == JPEGBaseline8Bit:
        return _baseline()
    if ts in (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K):
        ds = _read(REAL[JPEG2000Lossless])
        frames = _frames(ds)
        return _with(ds, frames, ts=ts), frames
    ds = _read(REAL[UID(ts)])
    return ds, _frames(ds)


ALL_SYNTAXES = [JPEGBaseline8Bit, *REAL, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K]


def _compressed_edge_cases() -> list[str]:
    if not EDGE.is_dir():
        return []
    names = []
    for path in sorted(p for p in EDGE.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
            checked = ds.file_meta.TransferSyntaxUID in codestream.CODESTREAM_SYNTAXES | {RLELossless}
        except Exception:  # noqa: BLE001 - not a DICOM file, no file meta, no transfer syntax
            continue
        if checked and "PixelData" in ds:  # a file cut before its Pixel Data has none
            names.append(str(path.relative_to(EDGE)))
    return names


# -- real streams are accepted, and their headers state the Image Pixel Module ----------------
@pytest.mark.parametrize("name", _compressed_edge_cases() + ["demo"])
def test_every_real_compressed_file_passes_its_header_check(name):
    ds = _read(name)
    if name in REFUSED:
        assert _status(ds) == REFUSED[name]
        return
    assert _status(ds) is None, _refusal(ds)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts == RLELossless:
        return
    for frame in _frames(ds):
        header = codestream.check_frame(frame, ts, rows=ds.Rows, columns=ds.Columns, samples=ds.SamplesPerPixel,
                                        bits_allocated=ds.BitsAllocated)
        assert (header.rows, header.columns, header.samples) == (ds.Rows, ds.Columns, ds.SamplesPerPixel)
        assert header.marker == ("SIZ" if ts in codestream.J2K_SYNTAXES
                                 else "SOF55" if ts in codestream.JPEG_LS_SYNTAXES else header.marker)


@pytest.mark.parametrize("ts", ALL_SYNTAXES, ids=lambda u: UID(u).keyword)
def test_accepted_without_decoding(ts, monkeypatch):
    ds, _ = _sample(ts)
    ds.pixel_array  # noqa: B018 - the sample itself decodes (before decoding is forbidden)

    def decode(*args, **kwargs):
        raise AssertionError("pixel data decoded inside the association")

    for method in ("as_array", "as_buffer", "iter_array", "iter_buffer"):
        monkeypatch.setattr(Decoder, method, decode)
    check_pixel_data(ds, ds.file_meta.TransferSyntaxUID, LIMIT)


def test_demo_series_headers():
    for path in sorted(DEMO.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        header = codestream.jpeg_header(_frames(ds)[0])
        assert (header.marker, header.rows, header.columns, header.samples) == ("SOF55", 512, 512, 1)
        assert header.precision == 16  # DCMTK codes the 12-bit CT at 16 bits (Bits Stored 12)


# -- truncated and garbled streams: 0xC000 ------------------------------------------------------
@pytest.mark.parametrize("ts", ALL_SYNTAXES, ids=lambda u: UID(u).keyword)
def test_truncated_last_frame_is_refused(ts):
    ds, frames = _sample(ts)
    last = frames[-1]
    head, end = _header_end(last, ts), last.rindex(b"\xff\xd9") + 2  # then 0 or 1 padding byte
    for cut in (head // 2, head, head + 7, end // 2, end - 3, end - 2, end - 1):
        broken = _with(ds, frames[:-1] + [last[:cut]])
        refusal = _refusal(broken)
        assert refusal.status == NOT_UNDERSTOOD, (cut, refusal)
        assert "truncated" in str(refusal) or "no SO" in str(refusal), (cut, refusal)


@pytest.mark.parametrize("ts", MULTI, ids=lambda u: UID(u).keyword)
def test_truncated_last_of_ten_frames_is_refused(ts):
    ds = _read(MULTI[ts])
    frames = _frames(ds)
    assert len(frames) == 10
    assert _status(_with(ds, frames)) is None
    for cut in (len(frames[-1]) // 3, frames[-1].rindex(b"\xff\xd9") + 1):
        refusal = _refusal(_with(ds, frames[:-1] + [frames[-1][:cut]]))
        assert refusal.status == NOT_UNDERSTOOD
        assert "frame 10" in str(refusal)


@pytest.mark.parametrize("ts", ALL_SYNTAXES, ids=lambda u: UID(u).keyword)
def test_missing_soi_or_eoi_is_refused(ts):
    ds, frames = _sample(ts)
    frame = frames[0]
    end = frame.rindex(b"\xff\xd9")
    no_end = _refusal(_with(ds, [frame[:end] + frame[end + 2 :]] + frames[1:]))
    assert no_end.status == NOT_UNDERSTOOD and "(FFD9)" in str(no_end)
    no_start = _refusal(_with(ds, [b"\x00\x00" + frame[2:]] + frames[1:]))
    assert no_start.status == NOT_UNDERSTOOD and ("SOI" in str(no_start) or "SOC" in str(no_start))


@pytest.mark.parametrize("ts", ALL_SYNTAXES, ids=lambda u: UID(u).keyword)
def test_header_cut_before_its_end_marker_is_refused(ts):
    """A stream cut inside its header (or, for JPEG 2000, inside a tile-part) that a sender
    closed with FFD9 anyway: the marker segments or tile-part lengths give it away."""
    ds, frames = _sample(ts)
    frame = frames[0]
    head = _header_end(frame, ts)
    cuts = [head // 2, head - 3]
    if UID(ts) in codestream.J2K_SYNTAXES:
        cuts += [head + 20, len(frame) // 2]
    for cut in cuts:
        refusal = _refusal(_with(ds, [frame[:cut] + b"\xff\xd9"] + frames[1:]))
        assert refusal.status == NOT_UNDERSTOOD, (cut, refusal)


@pytest.mark.parametrize("ts", ALL_SYNTAXES, ids=lambda u: UID(u).keyword)
def test_garbled_marker_is_refused(ts):
    ds, frames = _sample(ts)
    frame = bytearray(frames[0])
    third = 4 + int.from_bytes(frame[4:6], "big")  # the marker segment after the one after SOI/SOC
    for at, value in ((2, 0x12), (third, 0x00), (third + 2, 0xFF)):
        garbled = bytearray(frame)
        garbled[at] = value
        refusal = _refusal(_with(ds, [bytes(garbled)] + frames[1:]))
        assert refusal.status == NOT_UNDERSTOOD, (at, refusal)
    if UID(ts) not in codestream.J2K_SYNTAXES:  # Nf that disagrees with the frame header's length Lf
        sof = _header_end(bytes(frame), ts)
        sof = next(at for at in range(2, sof) if frame[at] == 0xFF and frame[at + 1] in (0xC0, 0xC1, 0xC3, 0xF7))
        garbled = bytearray(frame)
        garbled[sof + 9] = 3
        refusal = _refusal(_with(ds, [bytes(garbled)] + frames[1:]))
        assert refusal.status == NOT_UNDERSTOOD and "expected for 3 components" in str(refusal)


# -- headers that disagree with the Image Pixel Module: 0xA900 ----------------------------------
@pytest.mark.parametrize("ts", ALL_SYNTAXES, ids=lambda u: UID(u).keyword)
def test_wrong_geometry_is_refused(ts):
    ds, frames = _sample(ts)
    for keyword, value in (("Rows", ds.Rows + 1), ("Columns", ds.Columns - 2), ("SamplesPerPixel", 3)):
        wrong = _with(ds, frames, **{keyword: value})
        if keyword == "SamplesPerPixel":
            wrong.PhotometricInterpretation, wrong.PlanarConfiguration = "RGB", 0
        refusal = _refusal(wrong)
        assert refusal.status == MISMATCH, (keyword, refusal)
        assert ("Samples per Pixel" if keyword == "SamplesPerPixel" else keyword) in str(refusal)


@pytest.mark.parametrize("ts", [JPEGLossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: UID(u).keyword)
def test_precision_above_bits_allocated_is_refused(ts):
    ds, frames = _sample(ts)
    refusal = _refusal(_with(ds, frames, BitsAllocated=8, BitsStored=8, HighBit=7))
    assert refusal.status == MISMATCH and "Bits Allocated 8" in str(refusal)


def test_jpeg_rgb_baseline_states_three_components():
    ds, frames = _baseline(rgb=True)
    assert ds.pixel_array.shape == (768, 1024, 3)
    assert _status(ds) is None
    refusal = _refusal(_with(ds, frames, SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2"))
    assert refusal.status == MISMATCH and "Samples per Pixel 1 (header 3)" in str(refusal)


def test_a_stream_of_the_other_standard_is_refused():
    jls, jls_frames = _sample(JPEGLSLossless)
    assert _refusal(_with(jls, jls_frames, ts=JPEGLosslessSV1)).status == MISMATCH
    jpg, jpg_frames = _sample(JPEGLosslessSV1)
    assert _refusal(_with(jpg, jpg_frames, ts=JPEGLSLossless)).status == MISMATCH
    assert _refusal(_with(jpg, jpg_frames, ts=JPEG2000Lossless)).status == NOT_UNDERSTOOD


def test_jp2_file_format_is_read_through_its_codestream_box():
    """PS3.5 A.4.4 forbids the JP2 header but decoders read it: it is checked, not refused."""
    ds = _read(REAL[JPEG2000Lossless])
    jp2 = openjpeg.utils.encode_array(ds.pixel_array, codec_format=1, photometric_interpretation=2)
    assert jp2[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    wrapped = _with(ds, [bytes(jp2)])
    assert wrapped.pixel_array.shape == (512, 512)
    assert _status(wrapped) is None
    assert _refusal(_with(ds, [bytes(jp2)], Columns=256)).status == MISMATCH
    assert _refusal(_with(ds, [bytes(jp2[:-100])])).status == NOT_UNDERSTOOD


def test_dnl_segment_gives_the_number_of_lines():
    """A T.81 frame header may give 0 lines and a DNL segment after the first scan the number
    (T.81 B.2.5): the lines are read from it."""
    ds, (frame,) = _baseline()
    sof = frame.index(b"\xff\xc0")
    with_dnl = frame[: sof + 5] + b"\x00\x00" + frame[sof + 7 : -2] + b"\xff\xdc\x00\x04" + \
        ds.Rows.to_bytes(2, "big") + b"\xff\xd9"
    assert codestream.jpeg_header(with_dnl).rows == ds.Rows
    assert _status(_with(ds, [with_dnl])) is None
    assert _refusal(_with(ds, [with_dnl], Rows=ds.Rows - 1)).status == MISMATCH


# -- frames, fragments and offset tables ---------------------------------------------------------
@pytest.mark.parametrize("ts", MULTI, ids=lambda u: UID(u).keyword)
def test_number_of_frames_must_match(ts):
    ds = _read(MULTI[ts])
    frames = _frames(ds)
    for bot in (False, True):
        for claimed in (9, 11):
            wrong = _with(ds, frames, bot=bot)
            wrong.NumberOfFrames = claimed
            refusal = _refusal(wrong)
            assert refusal.status == MISMATCH, (bot, claimed, refusal)
    assert _refusal(_with(ds, frames[:9], NumberOfFrames=10)).status == MISMATCH


@pytest.mark.parametrize("ts", MULTI, ids=lambda u: UID(u).keyword)
def test_fragmented_frames_are_joined(ts):
    ds = _read(MULTI[ts])
    frames = _frames(ds)
    for bot in (False, True):
        split = _with(ds, frames, bot=bot, fragments=2)
        assert _status(split) is None, _refusal(split)
        assert split.pixel_array.shape == (10, 64, 64)
    demo, demo_frames = _sample(JPEGLSLossless)
    assert _status(_with(demo, demo_frames, fragments=3)) is None
    cut = _with(demo, demo_frames, fragments=3)
    value = cut.PixelData
    last = value.rindex(b"\xfe\xff\x00\xe0")  # the last fragment loses its end, its item stays whole
    length = int.from_bytes(value[last + 4 : last + 8], "little")
    cut.PixelData = value[: last + 4] + (length - 40).to_bytes(4, "little") + value[last + 8 : last + 8 + length - 40]
    assert _refusal(cut).status == NOT_UNDERSTOOD


@pytest.mark.parametrize("ts", MULTI, ids=lambda u: UID(u).keyword)
def test_basic_offset_table_must_agree(ts):
    ds = _read(MULTI[ts])
    frames = _frames(ds)
    good = _with(ds, frames, bot=True)
    assert _status(good) is None
    offsets = parse_basic_offsets(good.PixelData)
    assert len(offsets) == 10 and offsets[0] == 0

    def with_table(table: list[int]) -> pydicom.Dataset:
        out = _with(ds, frames)
        items = out.PixelData[8:]
        out.PixelData = struct.pack("<HHL", 0xFFFE, 0xE000, 4 * len(table)) + struct.pack(f"<{len(table)}L", *table) \
            + items
        return out

    shifted = offsets[:5] + [offsets[5] + 2] + offsets[6:]
    assert "not the start of a fragment" in str(_refusal(with_table(shifted)))
    assert _refusal(with_table(shifted)).status == NOT_UNDERSTOOD
    assert _refusal(with_table([4] + offsets[1:])).status == NOT_UNDERSTOOD
    assert _refusal(with_table(offsets[:4] + [offsets[5], offsets[4]] + offsets[6:])).status == NOT_UNDERSTOOD
    assert _refusal(with_table(offsets[:9])).status == MISMATCH


@pytest.mark.parametrize("ts", MULTI, ids=lambda u: UID(u).keyword)
def test_extended_offset_table_must_agree(ts):
    ds = _read(MULTI[ts])
    frames = _frames(ds)

    def with_table(offsets: list[int], lengths: list[int] | None, bot: bool = False) -> pydicom.Dataset:
        out = _with(ds, frames, bot=bot)
        if not bot:
            out.PixelData = encapsulate_extended(frames)[0]
        out.ExtendedOffsetTable = struct.pack(f"<{len(offsets)}Q", *offsets)
        if lengths is not None:
            out.ExtendedOffsetTableLengths = struct.pack(f"<{len(lengths)}Q", *lengths)
        return out

    _, table, table_lengths = encapsulate_extended(frames)
    offsets = list(struct.unpack("<10Q", table))
    lengths = list(struct.unpack("<10Q", table_lengths))
    good = with_table(offsets, lengths)
    assert _status(good) is None
    assert good.pixel_array.shape == (10, 64, 64)
    assert _refusal(with_table(offsets[:3] + [offsets[3] + 8] + offsets[4:], lengths)).status == NOT_UNDERSTOOD
    assert _refusal(with_table(offsets, lengths[:3] + [lengths[3] - 2] + lengths[4:])).status == NOT_UNDERSTOOD
    assert _refusal(with_table(offsets, None)).status == NOT_UNDERSTOOD
    # frame 4's length reaching over the item tag of frame 5 and its whole codestream
    over = lengths[:3] + [lengths[3] + 8 + lengths[4]] + lengths[4:]
    assert _refusal(with_table(offsets, over)).status == NOT_UNDERSTOOD
    assert _refusal(with_table(offsets[:9], lengths[:9])).status == MISMATCH
    assert _refusal(with_table(offsets, lengths, bot=True)).status == NOT_UNDERSTOOD


def test_fragment_past_the_end_is_refused():
    ds = _read(MULTI[JPEG2000Lossless])
    cut = _with(ds, _frames(ds))
    cut.PixelData = cut.PixelData[:-100]
    refusal = _refusal(cut)
    assert refusal.status == NOT_UNDERSTOOD and "fragment 10 claims" in str(refusal)


def test_only_codestream_syntaxes_are_read_by_markers():
    with pytest.raises(ValueError, match="not read by their markers"):
        codestream.check_frame(b"\xff\xd8\xff\xd9", RLELossless, rows=1, columns=1, samples=1, bits_allocated=8)
    assert codestream.CODESTREAM_SYNTAXES == {
        JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
        JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K}
