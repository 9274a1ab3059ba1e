"""Checks a received data set must pass before it is acknowledged.

An instance is acknowledged only if its image can later be decoded (GUIDE §4.5: a bad file must
never block the queue): native pixel data must have exactly the length the Image Pixel Module
(PS3.3 C.7.6.3) implies; encapsulated pixel data (PS3.5 A.4) must hold every frame and its first frame
must decode.
"""

from __future__ import annotations

import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import UID

STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


class Refusal(Exception):
    """The data set is refused with a DIMSE ``status`` (PS3.4 B.2.3); the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_pixel_data(ds: pydicom.Dataset, transfer_syntax: str) -> None:
    """Raise :class:`Refusal` when the pixel data of ``ds`` cannot be decoded later.

    Parameters
    ----------
    ds:
        The complete data set as received (with Pixel Data).
    transfer_syntax:
        The presentation context's transfer syntax UID.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return
        raise Refusal(STATUS_DATASET_MISMATCH, "image storage data set without Pixel Data (7FE0,0010)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise Refusal(STATUS_DATASET_MISMATCH, f"Image Pixel Module incomplete: {exc}") from None
    ts = UID(transfer_syntax)
    data = ds.PixelData
    if not ts.is_encapsulated:
        expected = (rows * cols * samples * frames * bits + 7) // 8
        if len(data) < expected:
            raise Refusal(
                STATUS_DATASET_MISMATCH,
                f"Pixel Data has {len(data)} bytes, {expected} expected for {frames} frame(s) of "
                f"{rows}x{cols}x{samples} at {bits} bits",
            )
        return
    try:
        found = sum(1 for _ in generate_frames(data, number_of_frames=frames))
    except Exception as exc:  # noqa: BLE001 - malformed encapsulation
        raise Refusal(STATUS_CANNOT_UNDERSTAND, f"encapsulated Pixel Data is malformed: {exc}") from None
    if found < frames:
        raise Refusal(STATUS_CANNOT_UNDERSTAND, f"{found} encoded frames for {frames} frames")
    try:
        pixel_array(ds, index=0)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise Refusal(
            STATUS_CANNOT_UNDERSTAND, f"first frame cannot be decoded ({ts.name}): {first}"
        ) from None
