"""Series to volume in patient space.

:func:`load_series` turns the files of one series into a :class:`Volume`: a float32 array in
(slices, rows, columns) order with its patient-space geometry (DICOM PS3.3 C.7.6.2, Image Plane
Module). Slices are ordered by the projection of Image Position (Patient) on the slice normal
(the cross product of the two Image Orientation (Patient) direction cosines), never by Instance
Number. Series that cannot be represented on a regular grid (gantry tilt, uneven spacing,
duplicated positions, mixed orientations or sizes, multi-frame objects) are refused with a
:class:`VolumeError` whose message is meant for the admin.
"""

from __future__ import annotations

import functools
import logging
import math
import mmap
import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID, JPEGLSTransferSyntaxes

from dicom_ai.cache.identity import mixed_patients
from dicom_ai.dicom.geometry import plane_axes
from dicom_ai.dicom.header import float_values, image_type_text, is_localizer
from dicom_ai.lifetime import die_with_parent

logger = logging.getLogger(__name__)

#: Tolerance on direction cosines (Image Orientation (Patient)) when comparing slices.
ORIENTATION_TOLERANCE = 1e-4
#: Relative tolerance on slice gaps; the absolute tolerance is :data:`SPACING_TOLERANCE_MM`.
SPACING_TOLERANCE_REL = 0.01
#: Absolute tolerance on slice gaps in mm.
SPACING_TOLERANCE_MM = 0.01
#: Largest in-plane shift between consecutive slice origins (mm) that is not called a tilt.
SHEAR_TOLERANCE_MM = 0.05
#: Fewest slices per decoding process; smaller series are decoded in this process (starting a
#: process costs about as much as decoding a few compressed slices).
MIN_SLICES_PER_PROCESS = 16
#: pydicom decoding plugin preferred per transfer syntax (PS3.5 A.4.3, JPEG-LS): CharLS (pyjpegls)
#: decodes about 3 times faster than libjpeg and refuses corrupt entropy-coded data, which
#: libjpeg turns into wrong pixels without an error. No other plugin is tried for these.
PREFERRED_PLUGINS: dict[str, str] = {str(uid): "pyjpegls" for uid in JPEGLSTransferSyntaxes}

#: SOP classes that never hold an image slice (PS3.4 B.5): SEG, SR, RT, presentation states,
#: key objects, encapsulated documents, raw data, waveforms.
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, fiducials, SEG, surface
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.481",  # RT objects
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.9",  # waveforms
    "1.2.840.10008.5.1.4.1.1.30",  # parametric map
)
#: Enhanced (multi-frame) image SOP classes: geometry lives in functional groups.
_ENHANCED_SOP = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
}


class VolumeError(ValueError):
    """The series cannot be turned into a volume; the message is for the admin."""


class NoImageSlices(VolumeError):
    """None of the files is an image slice (only non-image objects, localizers or unreadable files)."""


class IrregularGrid(VolumeError):
    """The slices do not lie on a regular grid; they might still be used one by one."""


class GantryTilt(IrregularGrid):
    """The slice origins move in the image plane from slice to slice (gantry tilt or shear)."""


class UnevenSpacing(IrregularGrid):
    """The gaps between slices differ (missing slices or an irregular acquisition)."""


class UndecodableSlice(VolumeError):
    """The pixel data of one slice cannot be decoded (e.g. corrupt entropy-coded data in a
    compressed fragment, PS3.5 A.4). The message names the file and its SOP Instance UID, the
    transfer syntax, the decoder and the decoder's reason; never patient data."""


@dataclass
class Volume:
    """A CT/MR series as a 3D array in patient space.

    Attributes
    ----------
    array:
        float32, shape (slices, rows, columns); CT in HU (Rescale Slope/Intercept applied).
    spacing:
        (slice, row, column) spacing in mm: slice = distance between slice centres along the
        normal, row = Pixel Spacing[0] (between rows), column = Pixel Spacing[1].
    origin:
        (3,) Image Position (Patient) of the first slice, mm, DICOM patient coordinates (LPS).
    direction:
        (3, 3) rows are unit vectors in patient coordinates: [0] row direction (IOP[0:3], along
        columns index), [1] column direction (IOP[3:6], along rows index), [2] slice normal in the
        order the slices are stored (increasing slice index).
    datasets:
        One header per slice, in slice order, read without pixel data.
    paths:
        The file of each slice, in slice order.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    datasets: list[pydicom.Dataset] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def index_to_patient(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) voxel indices (slice, row, column) to (N, 3) patient coordinates in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        k, r, c = ijk[:, 0], ijk[:, 1], ijk[:, 2]
        return (
            self.origin[None, :]
            + c[:, None] * self.spacing[2] * self.direction[0][None, :]
            + r[:, None] * self.spacing[1] * self.direction[1][None, :]
            + k[:, None] * self.spacing[0] * self.direction[2][None, :]
        )

    def patient_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Map (N, 3) patient coordinates (LPS, mm) to (N, 3) fractional voxel indices
        (slice, row, column); the inverse of :meth:`index_to_patient`."""
        xyz = np.asarray(xyz, dtype=np.float64) - self.origin[None, :]
        # direction rows are orthonormal, so the inverse is the transpose
        c = xyz @ self.direction[0] / self.spacing[2]
        r = xyz @ self.direction[1] / self.spacing[1]
        k = xyz @ self.direction[2] / self.spacing[0]
        return np.stack([k, r, c], axis=1)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0


def _sop_class(ds: pydicom.Dataset) -> str:
    """SOP Class UID of the data set, falling back to the file meta (some de-identified
    files carry an empty SOP Class UID in the data set)."""
    uid = str(ds.get("SOPClassUID", "") or "")
    if not uid:
        meta = getattr(ds, "file_meta", None)
        uid = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
    return uid


def _required_floats(ds: pydicom.Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    """The ``n`` values of a DS attribute of ``path`` as a float64 array of shape (n,).

    Raises
    ------
    VolumeError
        If the attribute is missing, holds another number of values, or one that is not a
        finite number (:func:`dicom_ai.dicom.header.float_values`).
    """
    value = ds.get(keyword, None)
    values = float_values(value, n)
    if values is None:
        raise VolumeError(f"{path.name}: {keyword} is missing or malformed ({value!r})")
    return np.asarray(values, dtype=np.float64)


def read_headers(paths: Iterable[Path]) -> list[tuple[Path, pydicom.Dataset]]:
    """Read the headers (no pixel data) of the image slices among ``paths``.

    Files that are not DICOM, non-image objects (SEG, SR, RT, presentation states, ...), and
    localizers (Image Type LOCALIZER, SCOUT or SCANOGRAM: the routing's own test,
    :func:`dicom_ai.dicom.header.is_localizer`) are left out and logged. Images whose Image
    Type is ``DERIVED`` are kept: reformatted or re-exported CT series (e.g. the CRLM-CT-1006
    series, ``DERIVED\\SECONDARY\\PROCESSED``) are what some sites send.

    Parameters
    ----------
    paths:
        Files of one series, in any order.

    Returns
    -------
    list of (path, dataset)
        The image slices, in the order given.

    Raises
    ------
    VolumeError
        If an image object is multi-frame (enhanced), which is not handled yet.
    """
    kept: list[tuple[Path, pydicom.Dataset]] = []
    for p in paths:
        path = Path(p)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            logger.warning("%s: not readable as DICOM, left out (%s)", path, exc)
            continue
        sop = _sop_class(ds)
        if sop.startswith(_NON_IMAGE_SOP_PREFIXES):
            logger.info("%s: non-image object (SOP class %s), left out", path.name, sop)
            continue
        if "Rows" not in ds or "Columns" not in ds:
            logger.info("%s: no image (no Rows/Columns), left out", path.name)
            continue
        if is_localizer(image_type_text(ds)):
            logger.info("%s: localizer, left out", path.name)
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if sop in _ENHANCED_SOP or frames > 1:
            name = _ENHANCED_SOP.get(sop, "multi-frame image")
            raise VolumeError(
                f"{path.name}: {name} with {frames} frame(s); multi-frame (enhanced) objects "
                "are not supported yet - send the series as single-frame images"
            )
        kept.append((path, ds))
    return kept


def check_one_patient(datasets: list[pydicom.Dataset]) -> None:
    """Refuse a series whose slices disagree about the patient (PS3.3 C.7.1.1 Patient Module:
    Patient ID, Issuer of Patient ID, Patient's Name, Birth Date, Sex; compared as the receiver
    compares them, :func:`dicom_ai.cache.identity.mixed_patients`). The receiver refuses such
    instances; this guards series indexed before it did, so that no result is ever made from,
    or sent under the name of, a volume of two patients.

    Raises
    ------
    VolumeError
        Naming the attributes that differ (not their values: the message is logged).
    """
    differing = mixed_patients(datasets)
    if differing:
        raise VolumeError(
            f"the series mixes patients: {', '.join(differing)} "
            f"{'differs' if len(differing) == 1 else 'differ'} between its "
            f"{len(datasets)} slices; not processed (correct the identity at the sender and send "
            "the series again)"
        )


@functools.cache
def _plugin(transfer_syntax: str) -> str:
    """The pydicom decoding plugin for ``transfer_syntax`` (:data:`PREFERRED_PLUGINS`), or ""
    (pydicom tries every available one) where none is preferred or it is not installed."""
    plugin = PREFERRED_PLUGINS.get(transfer_syntax, "")
    if plugin and plugin not in get_decoder(UID(transfer_syntax)).available_plugins:
        return ""
    return plugin


def preferred_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """``ds.pixel_array`` (stored values), decoded with the plugin :data:`PREFERRED_PLUGINS`
    names for the data set's transfer syntax, where there is one and it is installed; for the
    series the worker reads and the slices the web viewer shows alike.

    Raises
    ------
    Exception
        Whatever the pydicom decoder raises for pixel data it cannot decode.
    """
    plugin = _plugin(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    if plugin:
        ds.pixel_array_options(decoding_plugin=plugin)
    return ds.pixel_array


def _decoder_reason(exc: BaseException) -> str:
    """The first line of what the decoder said; pydicom wraps plugin errors in a RuntimeError
    whose first line only says that all plugins failed, the next lines give each plugin's reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Unable to decode as exceptions were raised") and len(lines) > 1:
        return lines[1]
    return lines[0]


def _decode_file(path: Path, out: np.ndarray) -> tuple[str, str] | None:
    """Read ``path`` whole, decode its single frame and write ``slope * stored + intercept``
    (Rescale Slope and Intercept, PS3.3 C.11.1.1.2) into ``out``, float32 (rows, columns).

    Returns
    -------
    None on success, else (name of the :class:`VolumeError` subclass to raise, message): the
    message names the file, its SOP Instance UID, the transfer syntax, the decoder and the
    first line of the decoder's reason.
    """
    ds: pydicom.Dataset | None = None
    plugin = ""
    try:
        ds = pydicom.dcmread(path)
        plugin = _plugin(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))  # for the message
        pixels = preferred_pixels(ds)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        meta = getattr(ds, "file_meta", None) if ds is not None else None
        ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
        uid = str(ds.get("SOPInstanceUID", "") or "") if ds is not None else ""
        if not uid and meta is not None:
            uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        ts_text = f"{UID(ts).name} ({ts})" if UID(ts).is_transfer_syntax else (ts or "unknown")
        reason = _decoder_reason(exc)
        if plugin and reason.startswith(f"{plugin}: "):  # pydicom prefixes the plugin's name
            reason = reason[len(plugin) + 2:]
        return "UndecodableSlice", (
            f"{path.name} (SOP Instance UID {uid or 'unknown'}): pixel data cannot be decoded "
            f"(transfer syntax {ts_text}, {plugin or 'any available decoder'}): {reason}"
        )
    if pixels.shape != out.shape:
        rows, cols = out.shape
        return "VolumeError", f"{path.name}: pixel data shape {pixels.shape} is not one {rows}x{cols} frame"
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    out[...] = pixels
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return None


def _raise_failure(kind: str, message: str) -> NoReturn:
    raise (UndecodableSlice if kind == "UndecodableSlice" else VolumeError)(message)


def decode_processes(n_files: int) -> int:
    """How many processes decode a series of ``n_files`` files: at most one per CPU this
    process may run on (``os.sched_getaffinity``), at least :data:`MIN_SLICES_PER_PROCESS`
    files each; 1 (decode in this process) where fork is not available or this process is a
    daemon (which may not have children)."""
    if "fork" not in mp.get_all_start_methods() or mp.current_process().daemon:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, n_files // MIN_SLICES_PER_PROCESS))


#: The array and files of a decoding process, set when it starts (inherited through fork,
#: never pickled).
_CHILD_STATE: tuple[np.ndarray, Sequence[Path]] | None = None


def _child_init(array: np.ndarray, paths: Sequence[Path], parent_pid: int) -> None:
    """Start of a decoding process: keep the array and files, and end with the process that
    forked it, however that one ends (:func:`~dicom_ai.lifetime.die_with_parent`; otherwise an
    orphan would wait for work forever, holding the shared array)."""
    global _CHILD_STATE
    _CHILD_STATE = (array, paths)
    die_with_parent(parent_pid)


def _child_decode(start: int, stop: int) -> list[tuple[int, str, str]]:
    """Decode files ``start:stop`` into their slots of the shared array; every failure as
    (file index, error class name, message)."""
    assert _CHILD_STATE is not None, "_child_init runs first"
    array, paths = _CHILD_STATE
    failures = []
    for i in range(start, stop):
        failure = _decode_file(paths[i], array[i])
        if failure is not None:
            failures.append((i, *failure))
    return failures


def _permute_slices(array: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """``array[order]`` for ``array`` (files, rows, columns), without a second full array where
    ``order`` is a permutation of all files (moved in place, cycle by cycle)."""
    n = len(order)
    if n != array.shape[0] or sorted(order) != list(range(n)):
        return array[np.asarray(order, dtype=np.intp)]
    done = np.zeros(n, dtype=bool)
    for start in range(n):
        if done[start] or order[start] == start:
            done[start] = True
            continue
        held = array[start].copy()
        k = start
        while True:
            done[k] = True
            src = order[k]
            if src == start:
                array[k] = held
                break
            array[k] = array[src]
            k = src
    return array


class _ForkedDecoding:
    """Every file of a series decoded by forked processes while this process reads the headers:
    the files are decoded in the order given, each into its own slot of one float32 (files,
    rows, columns) array in anonymous shared memory (``mmap``, MAP_SHARED), which forked
    processes write into without copies. The codecs and pydicom's parsing hold the GIL, so
    threads would not help.
    :meth:`result` waits and puts the kept slices in slice order."""

    def __init__(self, paths: Sequence[Path], rows: int, cols: int, processes: int) -> None:
        n = len(paths)
        buffer = mmap.mmap(-1, n * rows * cols * 4)
        self.array = np.frombuffer(buffer, dtype=np.float32).reshape(n, rows, cols)
        self.pool = ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("fork"),
                                        initializer=_child_init, initargs=(self.array, paths, os.getpid()))
        # a few chunks per process, so that one slow chunk does not leave a CPU idle
        size = max(1, math.ceil(n / (4 * processes)))
        self.futures = [self.pool.submit(_child_decode, a, min(a + size, n)) for a in range(0, n, size)]

    def result(self, order: Sequence[int]) -> np.ndarray:
        """The (slices, rows, columns) array of the files ``order`` (indices in the paths
        given), in that order.

        Raises
        ------
        UndecodableSlice, VolumeError
            For the first of those files (in that order) that failed; VolumeError if a decoding
            process died.
        """
        failures: dict[int, tuple[str, str]] = {}
        try:
            for future in self.futures:
                failures.update((i, (kind, message)) for i, kind, message in future.result())
        except BrokenProcessPool as exc:
            raise VolumeError(
                f"a pixel data decoding process died while decoding the {len(self.array)} files "
                f"(a decoder crashed on one of them): {exc}"
            ) from exc
        finally:
            self.close()
        for i in order:
            if i in failures:
                _raise_failure(*failures[i])
        return _permute_slices(self.array, order)

    def close(self) -> None:
        """Stop: chunks not started are dropped, running ones are waited for."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _start_decoding(paths: Sequence[Path]) -> _ForkedDecoding | None:
    """Start decoding every file in forked processes (:func:`decode_processes`), the array sized
    by the first file with Rows and Columns; None where one process is enough and the series
    is decoded in this process.

    Native (uncompressed, PS3.5 8.1.1 and A.1-A.3) pixel data go to the processes as well:
    reading such a file is mostly pydicom's parsing and the scaling of its pixels, work that
    divides between cores as decoding does. In the inference worker, a process
    holding torch and the model, the 275 uncompressed files of LIDC-IDRI-0314 took 1.06-1.18 s
    in the process itself against 0.40-0.61 s in two forked ones."""
    processes = decode_processes(len(paths))
    if processes <= 1:
        return None
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if "Rows" in ds and "Columns" in ds:
            return _ForkedDecoding(paths, int(ds.Rows), int(ds.Columns), processes)
    return None


def load_series(paths: list[Path]) -> Volume:
    """Read the files of one series and assemble a :class:`Volume`.

    Steps (DICOM PS3.3 C.7.6.2 Image Plane Module, C.11.1 Modality LUT Module):

    1. read headers without pixel data; leave out non-DICOM files, non-image objects and
       localizers (:func:`read_headers`);
    2. check the slices form one group: one Series Instance UID, identical Image Orientation
       (Patient) (within :data:`ORIENTATION_TOLERANCE`), identical Rows, Columns and Pixel
       Spacing;
    3. sort by the projection of Image Position (Patient) on the slice normal
       ``n = row_direction x column_direction``;
    4. check the slice origins advance along the normal only (no gantry tilt / shear), with
       uniform gaps (within 1 % or 0.01 mm) and no duplicated positions;
    5. decode each slice (uncompressed, deflated, RLE, JPEG, JPEG-LS and JPEG 2000 through
       pydicom and its plugins; JPEG-LS with CharLS, :data:`PREFERRED_PLUGINS`) and write
       ``slope * stored + intercept`` into one preallocated float32 array, in up to one
       forked process per usable CPU (:func:`decode_processes`),
       which start on the files in the order given while steps 1-4 run here.

    Parameters
    ----------
    paths:
        The files of one series, in any order.

    Returns
    -------
    Volume
        ``array`` float32 (slices, rows, columns), in HU for CT; ``spacing`` (slice, row,
        column) in mm; ``origin`` the first slice's Image Position (Patient) in mm (LPS);
        ``direction`` (3, 3) with rows (row direction, column direction, slice normal in
        storage order); ``datasets`` and ``paths`` in slice order.

    Raises
    ------
    VolumeError
        If no image slice is left, the slices belong to several series or differ in
        orientation, size or pixel spacing, the series is gantry-tilted, its slice spacing is
        uneven, two slices share a position, an object is multi-frame, or a slice holds
        another frame size. The message names the problem for the admin.
    UndecodableSlice
        If the pixel data of a slice cannot be decoded (the first such slice in slice order):
        the message names its file and SOP Instance UID and gives the decoder's reason.
    """
    files = [Path(p) for p in paths]
    decoding = _start_decoding(files)  # decodes while the headers are read and checked
    try:
        return _load_series(files, decoding)
    finally:
        if decoding is not None:
            decoding.close()


def _load_series(paths: list[Path], decoding: _ForkedDecoding | None) -> Volume:
    """:func:`load_series` with the pixel data from ``decoding``, or decoded here if None."""
    slices = read_headers(paths)
    if not slices:
        raise NoImageSlices("no image slices in the series (only non-image objects, localizers or unreadable files)")

    # --- group checks -------------------------------------------------------------------
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series_uids) > 1:
        raise VolumeError(f"files belong to {len(series_uids)} different series (Series Instance UID)")

    first_path, first = slices[0]
    iop0 = _required_floats(first, "ImageOrientationPatient", 6, first_path)
    rows0, cols0 = int(first.Rows), int(first.Columns)
    ps0 = _required_floats(first, "PixelSpacing", 2, first_path)
    positions = np.empty((len(slices), 3), dtype=np.float64)
    for i, (path, ds) in enumerate(slices):
        iop = _required_floats(ds, "ImageOrientationPatient", 6, path)
        if np.max(np.abs(iop - iop0)) > ORIENTATION_TOLERANCE:
            raise VolumeError(
                f"{path.name}: Image Orientation (Patient) {list(iop)} differs from "
                f"{list(iop0)}; the series mixes orientations"
            )
        if int(ds.Rows) != rows0 or int(ds.Columns) != cols0:
            raise VolumeError(
                f"{path.name}: image size {ds.Rows}x{ds.Columns} differs from {rows0}x{cols0}"
            )
        ps = _required_floats(ds, "PixelSpacing", 2, path)
        if np.max(np.abs(ps - ps0)) > 1e-4 * max(1.0, float(ps0.max())):
            raise VolumeError(f"{path.name}: Pixel Spacing {list(ps)} differs from {list(ps0)}")
        positions[i] = _required_floats(ds, "ImagePositionPatient", 3, path)

    row_dir, col_dir = iop0[:3], iop0[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 or abs(
        row_dir @ col_dir
    ) > 1e-3:
        raise VolumeError(f"Image Orientation (Patient) {list(iop0)} is not two orthonormal vectors")
    axes = plane_axes(iop0)
    assert axes is not None  # orthonormal, checked above
    row_dir, col_dir, normal = axes

    # --- sort along the normal ----------------------------------------------------------
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    proj = proj[order]
    positions = positions[order]
    slices = [slices[i] for i in order]

    if len(slices) > 1:
        gaps = np.diff(proj)
        dup = np.flatnonzero(gaps < SPACING_TOLERANCE_MM)
        if dup.size:
            a, b = slices[dup[0]][0].name, slices[dup[0] + 1][0].name
            raise VolumeError(
                f"{dup.size + 1} slices share a position (e.g. {a} and {b} at {proj[dup[0]]:.2f} mm "
                "along the normal); several acquisitions or repeated instances in one series"
            )
        steps = np.diff(positions, axis=0)
        in_plane = steps - np.outer(gaps, normal)
        shear = np.linalg.norm(in_plane, axis=1)
        if shear.max() > max(SHEAR_TOLERANCE_MM, 0.01 * float(np.median(gaps))):
            angle = np.degrees(np.arctan2(np.median(shear), np.median(gaps)))
            raise GantryTilt(
                f"gantry-tilted or sheared series: slice origins move {shear.max():.2f} mm in the "
                f"image plane between slices (about {angle:.1f} degrees); not supported yet"
            )
        spacing_slice = float(np.median(gaps))
        tol = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * spacing_slice)
        if np.max(np.abs(gaps - spacing_slice)) > tol:
            raise UnevenSpacing(
                f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
                f"(median {spacing_slice:.3f} mm); missing slices or an irregular acquisition"
            )
        spacing_slice = float((proj[-1] - proj[0]) / (len(proj) - 1))
    else:
        ds = slices[0][1]
        spacing_slice = float(ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0)

    # --- pixel data ----------------------------------------------------------------------
    if decoding is not None and decoding.array.shape[1:] != (rows0, cols0):
        decoding.close()  # sized by a file left out (e.g. a localizer of another size)
        decoding = None
    if decoding is not None:
        index = {path: i for i, path in enumerate(paths)}
        array = decoding.result([index[path] for path, _ in slices])
    else:
        array = np.empty((len(slices), rows0, cols0), dtype=np.float32)
        for k, (path, _) in enumerate(slices):
            failure = _decode_file(path, array[k])
            if failure is not None:
                _raise_failure(*failure)

    direction = np.stack([row_dir, col_dir, normal])
    return Volume(
        array=array,
        spacing=(spacing_slice, float(ps0[0]), float(ps0[1])),
        origin=positions[0].copy(),
        direction=direction,
        datasets=[ds for _, ds in slices],
        paths=[p for p, _ in slices],
    )
