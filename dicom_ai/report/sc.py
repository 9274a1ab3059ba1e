"""Secondary Capture images of a segmentation: the source slices with the segments burned in.

A viewer-safe fallback for archives and viewers that cannot display DICOM SEG: one RGB 8-bit
image per source slice (every slice, in slice order), the CT windowed to grey with each label's
voxels blended in its manifest colour, a legend (colour swatch, label name, volume in mL) and
the text :data:`DISCLAIMER` burned into the pixels (Burned In Annotation (0028,0301) ``YES``,
PS3.3 C.7.6.1.1.11).

SOP class: **Secondary Capture Image Storage** (1.2.840.10008.5.1.4.1.1.7, PS3.3 A.8.1), one
single-frame instance per slice, written as a *Standard Extended SOP Class*: the Frame of
Reference UID (0020,0052), Position Reference Indicator (0020,1040), Image Position (Patient)
(0020,0032), Image Orientation (Patient) (0020,0037), Slice Thickness (0018,0050) and Slice
Location (0020,1041) of the source slice are added as Type 3 attributes. They are the Frame of
Reference Module (C.7.4.1) and Image Plane Module (C.7.6.2) attributes, which the SC Image IOD
does not list; Pixel Spacing (0028,0030) is part of the SC Image Module itself (C.8.6.2, Basic
Pixel Spacing Calibration Macro). Viewers that sync series by position read these top-level
attributes from any image, so the SC pages along with the CT; a Level 2 (Full) storage SCP keeps
them (PS3.4 B.4.1), and a viewer that ignores them still shows the image.

The alternative checked with dicom3tools ``dciodvfy``: **Multi-frame True Color SC Image
Storage** (1.2.840.10008.5.1.4.1.1.7.4, PS3.3 A.8.5), which has the Frame of Reference Module
and the Multi-frame Functional Groups Module (C.7.6.16: Plane Position (Patient), Plane
Orientation (Patient) and Pixel Measures per frame) as User-optional modules. It validates
without a warning, even as one instance per slice (Number of Frames 1), but it is the class that
archives without SEG support handle least well, and many of their viewers read geometry only
from the top-level Image Plane attributes, not from functional groups: such a series would
display but not sync. So the plain SC class, the one every archive displays, is used. ``dciodvfy`` reports
no error on these instances and exactly the warnings of :data:`EXPECTED_DCIODVFY_WARNINGS` (one
"not present in standard DICOM IOD" per added attribute, also for the model's Device UID
(0018,1002) of the node's common identity, and the summary line naming the Standard Extended
SOP Class), plus warnings about values the source itself lacks (an empty Study Time or Study ID
is copied as it is).

Identity: as on the SEG, :func:`dicom_ai.report.identity.apply_identity` (Manufacturer, the
model as Manufacturer's Model Name, Software Versions, Device UID, the Processing Algorithm item
of the Contributing Equipment Sequence, Body Part Examined of the source).

Overlay: each label is a *filled* blend at opacity :data:`dicom_ai.report.preview.ALPHA`
(``(1 - alpha) * grey + alpha * colour``), as in the PNG preview; the grey level under the
colour still shows the anatomy.
"""

from __future__ import annotations

import datetime
import math
import socket
from collections.abc import Mapping

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import ModelManifest
from dicom_ai.report import uids
from dicom_ai.report.identity import PATIENT_STUDY, PATIENT_STUDY_TYPE2, apply_identity
from dicom_ai.report.measure import LabelMeasurement, check_mask
from dicom_ai.report.preview import ALPHA, LUNG_WINDOW
from dicom_ai.report.seg import series_description

#: Kind of result for :mod:`dicom_ai.report.uids` (one result series per kind).
KIND = "SC"
#: Burned into every image.
DISCLAIMER = "AI result, not for diagnostic use"
#: Series Description kind, as in ``"AI Lung secondary capture (dicom-ai-lung 1.0.0)"``.
DESCRIPTION_KIND = "secondary capture"

#: The attributes added to the SC Image IOD (PS3.3 A.8.1) to carry the source geometry.
GEOMETRY_KEYWORDS = (
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "SliceLocation",
)
#: dciodvfy's warnings on these instances, in its order: one per geometry attribute, one for the
#: model's Device UID (0018,1002) that :func:`dicom_ai.report.identity.apply_identity` writes as
#: on every result object, and the summary line.
EXPECTED_DCIODVFY_WARNINGS = (
    "Attribute is not present in standard DICOM IOD - (0x0018,0x0050) DS Slice Thickness",
    "Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x0032) DS Image Position (Patient)",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x0037) DS Image Orientation "
    "(Patient)",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x0052) UI Frame of Reference UID",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x1040) LO Position Reference "
    "Indicator",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x1041) DS Slice Location",
    "Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard "
    "Extended SOP Class",
)

_LO_MAX = 64  # LO value length, PS3.5 Table 6.2-1

# (121322, DCM) "Source image for image processing operation", PS3.16 CID 7202
_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
# (113076, DCM) "Segmentation", PS3.16 CID 7203 Image Derivation
_DERIVATION = ("113076", "DCM", "Segmentation")

_TEXT = (255, 255, 255)
_PANEL_OPACITY = 0.6  # of the black panel behind the text, so it reads on any anatomy


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _check_source(volume: Volume) -> None:
    if len(volume.datasets) != volume.array.shape[0]:
        raise ValueError(
            f"volume has {volume.array.shape[0]} slices but {len(volume.datasets)} source headers"
        )
    for i, ds in enumerate(volume.datasets):
        for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
                        "StudyInstanceUID", "ImagePositionPatient", "ImageOrientationPatient"):
            if not ds.get(keyword):
                raise ValueError(f"source header {i} has no {keyword}")


def _grey_lut(labels: int, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """(labels + 1) * 256 x 3 uint8: row ``i * 256 + g`` is grey level ``g`` blended with colour
    ``i`` (0: no label, plain grey)."""
    grey = np.arange(256, dtype=np.float32)[:, None]
    rows = [np.repeat(grey, 3, axis=1)]
    for color in colors:
        rows.append((1.0 - ALPHA) * grey + ALPHA * np.asarray(color, dtype=np.float32)[None, :])
    lut = np.concatenate(rows[: labels + 1], axis=0)
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels; its bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _legend_lines(
    manifest: ModelManifest, measurements: Mapping[int, LabelMeasurement]
) -> list[tuple[tuple[int, int, int] | None, str]]:
    lines: list[tuple[tuple[int, int, int] | None, str]] = [
        (None, DISCLAIMER),
        (None, f"{manifest.name} {manifest.version}"),
    ]
    for label in manifest.labels:
        m = measurements.get(label.value)
        if m is None or not math.isfinite(m.volume_ml):
            text = f"{label.name}: volume n/a"
        elif m.is_empty:
            text = f"{label.name}: not found"
        else:
            text = f"{label.name}: {m.volume_ml:.1f} mL"
        lines.append((tuple(int(c) for c in label.color), text))  # type: ignore[arg-type]
    return lines


def render_annotation(
    rows: int,
    columns: int,
    manifest: ModelManifest,
    measurements: Mapping[int, LabelMeasurement],
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The burned-in text panel (disclaimer, model, legend), drawn once for all slices.

    Pillow's built-in font at ``columns * 14 / 512`` pixels (at least 10: 14 px on a 512 x 512
    image), white on a black panel of opacity 0.6 in the upper left corner.

    Parameters
    ----------
    rows, columns: int
        Size of the images, pixels.
    manifest: dicom_ai.package.manifest.ModelManifest
        Labels (names, colours), model name and version.
    measurements: Mapping[int, LabelMeasurement]
        By ``Label.value``; gives the volumes in mL of the legend.

    Returns
    -------
    tuple
        ``(box, weight, color)``: ``box`` the (rows, columns) slices of the image the panel
        covers, ``weight`` float32 (h, w, 1) the panel's opacity, ``color`` float32 (h, w, 3)
        its colour premultiplied by ``weight``; a pixel ``p`` of the box becomes
        ``p * (1 - weight) + color``.
    """
    size = max(10, round(columns * 14 / 512))
    font = _font(size)
    step, pad = size + size // 3, max(2, size // 3)
    lines = _legend_lines(manifest, measurements)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    swatch = size
    width = max(
        int(probe.textlength(text, font=font)) + (swatch + pad if color else 0)
        for color, text in lines
    ) + 2 * pad
    height = step * len(lines) + 2 * pad
    width, height = min(width, columns), min(height, rows)
    rgba = Image.new("RGBA", (width, height), (0, 0, 0, round(255 * _PANEL_OPACITY)))
    draw = ImageDraw.Draw(rgba)
    y = pad
    for color, text in lines:
        x = pad
        if color is not None:
            draw.rectangle((x, y + 1, x + swatch - 1, y + swatch), fill=(*color, 255))
            x += swatch + pad
        draw.text((x, y), text, fill=(*_TEXT, 255), font=font)
        y += step
    panel = np.asarray(rgba, dtype=np.float32)
    weight = panel[..., 3:] / 255.0
    return (slice(0, height), slice(0, width)), weight, panel[..., :3] * weight


class _Renderer:
    """Draws slice ``k`` of a volume: the LUTs and the text panel are made once."""

    def __init__(
        self,
        volume: Volume,
        mask: np.ndarray,
        manifest: ModelManifest,
        measurements: Mapping[int, LabelMeasurement],
        window: tuple[float, float],
        annotate: bool,
    ) -> None:
        self.mask = check_mask(volume, mask, manifest)
        self.array = volume.array
        center, width = float(window[0]), float(window[1])
        if not width > 0:
            raise ValueError(f"window width must be > 0, got {width}")
        _, rows, columns = volume.array.shape
        labels = list(manifest.labels)
        self.lut = _grey_lut(len(labels), [tuple(label.color) for label in labels])  # type: ignore[misc]
        self.index = np.zeros(256, dtype=np.intp)  # label value -> offset of its LUT block
        for number, label in enumerate(labels, start=1):
            self.index[label.value] = number * 256
        # linear VOI function of PS3.3 C.11.2.1.2.1, output range 0..255
        self.low = center - 0.5 - (width - 1) / 2
        self.scale = 255.0 / max(width - 1, 1e-6)
        self.panel = render_annotation(rows, columns, manifest, measurements) if annotate else None
        self.grey = np.empty((rows, columns), dtype=np.float32)

    def __call__(self, k: int, out: np.ndarray | None = None) -> np.ndarray:
        grey = self.grey
        np.subtract(self.array[k], self.low, out=grey)
        np.multiply(grey, self.scale, out=grey)
        np.clip(grey, 0.0, 255.0, out=grey)
        codes = grey.astype(np.intp)
        codes += self.index[self.mask[k]]
        rgb = np.take(self.lut, codes, axis=0, out=out)
        if self.panel is not None:
            box, weight, color = self.panel
            region = rgb[box]
            region[...] = np.rint(region * (1.0 - weight) + color).astype(np.uint8)
        return rgb


def render_slices(
    volume: Volume,
    mask: np.ndarray,
    manifest: ModelManifest,
    measurements: Mapping[int, LabelMeasurement],
    window: tuple[float, float] = LUNG_WINDOW,
    *,
    annotate: bool = True,
) -> np.ndarray:
    """The burned-in RGB images of every slice, as :func:`build_secondary_capture` draws them.

    Parameters
    ----------
    volume: dicom_ai.infer.volume.Volume
        Source volume; ``array`` float32 (slices, rows, columns), in HU for CT.
    mask: numpy.ndarray
        uint8 label mask (slices, rows, columns) on the same grid (see
        :func:`dicom_ai.report.measure.check_mask`).
    manifest: dicom_ai.package.manifest.ModelManifest
        Labels (values, names, colours), model name and version.
    measurements: Mapping[int, LabelMeasurement]
        By ``Label.value`` (as :func:`dicom_ai.report.measure.measure_labels` returns them).
    window: tuple[float, float], optional
        (Window Center, Window Width) in the unit of ``volume.array`` (HU), applied as the
        linear VOI function of PS3.3 C.11.2.1.2.1; the lung window L -600 / W 1500 by default.
    annotate: bool, optional
        Burn in the text panel (:func:`render_annotation`); without it, only grey and colours.

    Returns
    -------
    numpy.ndarray
        uint8, shape (slices, rows, columns, 3), RGB.

    Raises
    ------
    ValueError
        If the mask does not fit the volume or the manifest, or the window width is not > 0.
    """
    render = _Renderer(volume, mask, manifest, measurements, window, annotate)
    out = np.empty((*volume.array.shape, 3), dtype=np.uint8)
    for k in range(volume.array.shape[0]):
        render(k, out[k])
    return out


def _patient_orientation(iop: list[float]) -> list[str]:
    """Patient Orientation (0020,0020) of the row and column directions (PS3.3 C.7.6.1.1.1):
    the letters of the patient axes each direction runs towards, largest component first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    result = []
    for vector in (iop[:3], iop[3:6]):
        order = sorted(range(3), key=lambda i: -abs(vector[i]))
        text = "".join(letters[i][0 if vector[i] > 0 else 1] for i in order
                       if abs(vector[i]) > 1e-4)
        result.append(text[:3] or "L")
    return result


def _source_reference(src: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = src.SOPClassUID
    item.ReferencedSOPInstanceUID = src.SOPInstanceUID
    return item


def build_secondary_capture(
    volume: Volume,
    mask: np.ndarray,
    manifest: ModelManifest,
    measurements: Mapping[int, LabelMeasurement],
    *,
    series_number: int = 903,
    window: tuple[float, float] = LUNG_WINDOW,
    device_serial_number: str | None = None,
    precision: str = "float32",
) -> list[pydicom.Dataset]:
    """One Secondary Capture image per source slice, with the segments and a legend burned in.

    PS3.3 A.8.1 Secondary Capture Image IOD, extended with the source geometry (see the module
    docstring). Each image: RGB, 8 bits, Planar Configuration 0 (C.7.6.3), the CT windowed to
    grey, each label filled in its ``Label.color`` at opacity
    :data:`dicom_ai.report.preview.ALPHA`, and a panel with :data:`DISCLAIMER`, the model and
    the legend (swatch, label name, volume in mL).

    Parameters
    ----------
    volume: dicom_ai.infer.volume.Volume
        Source volume; ``array`` float32 (slices, rows, columns) in HU for CT;
        ``volume.datasets[i]`` is the header of the single-frame instance of slice ``i``.
    mask: numpy.ndarray
        uint8 label mask (slices, rows, columns) on the grid of ``volume``; each non-zero value
        is a ``Label.value`` of the manifest.
    manifest: dicom_ai.package.manifest.ModelManifest
        The model: labels (names, colours), name and version.
    measurements: Mapping[int, LabelMeasurement]
        By ``Label.value``, as :func:`dicom_ai.report.measure.measure_labels` returns them; a
        label without one shows "volume n/a".
    series_number: int, optional
        Series Number (0020,0011).
    window: tuple[float, float], optional
        (Window Center, Window Width) in HU (PS3.3 C.11.2.1.2); the lung window L -600 /
        W 1500 (:data:`dicom_ai.report.preview.LUNG_WINDOW`) by default, which shows the lungs
        and, darker, the mediastinum.
    device_serial_number: str | None, optional
        Device Serial Number (0018,1000); the host name of this node by default.
    precision: str, optional
        The precision the network ran in (:attr:`dicom_ai.infer.runtime.LoadedModel.precision`);
        other than ``"float32"`` it is part of each SOP Instance UID's ``variant``.

    Returns
    -------
    list[pydicom.Dataset]
        One data set per slice, in slice order, with file meta information (Explicit VR Little
        Endian) so that ``save_as(path, enforce_file_format=True)`` writes a Part 10 file.
        Series Instance UID: :func:`dicom_ai.report.uids.result_series_uid` of the source
        series and model with kind :data:`KIND`; SOP Instance UID:
        :func:`dicom_ai.report.uids.result_instance_uid` of all the source instances, with the
        slice's SOP Instance UID and the window as ``variant`` (the same for the same inputs,
        different per slice). Instance Number is the slice index + 1.

    Raises
    ------
    ValueError
        If the mask does not fit the volume or the manifest, the source headers are missing or
        lack UIDs or geometry, or the window width is not > 0.
    """
    _check_source(volume)
    render = _Renderer(volume, mask, manifest, measurements, window, annotate=True)
    source = volume.datasets
    first = source[0]
    source_series = str(first.SeriesInstanceUID)
    all_sources = [str(ds.SOPInstanceUID) for ds in source]
    series_uid = uids.result_series_uid(source_series, manifest.name, manifest.version, KIND)
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    serial = (device_serial_number or socket.gethostname() or "unknown")[:_LO_MAX]
    center, width = float(window[0]), float(window[1])
    description = series_description(manifest, DESCRIPTION_KIND)
    _, rows, columns = volume.array.shape
    # a series belongs to one patient and one study (load_series refuses mixed patients): the
    # Patient and General Study attributes are read once, from the first header
    patient_study = {
        keyword: first[keyword].value if keyword in first else None
        for keyword in PATIENT_STUDY
        if keyword in first or keyword in PATIENT_STUDY_TYPE2
    }
    result = []
    for k, src in enumerate(source):
        ds = Dataset()
        ds.SpecificCharacterSet = src.get("SpecificCharacterSet", "ISO_IR 100")
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = uids.result_instance_uid(
            source_series, manifest.name, manifest.version, KIND, all_sources,
            # one image per source slice, and its pixels depend on the window
            variant=uids.variant_of(f"{src.SOPInstanceUID}|{center:g}/{width:g}", precision=precision),
        )
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        for keyword, value in patient_study.items():
            setattr(ds, keyword, value)
        # General Series (C.7.3.1); Laterality is Type 2C on the body part, copied as is
        ds.Modality = "OT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        if src.get("Laterality"):
            ds.Laterality = src.Laterality
        # SC Equipment (C.8.6.1); General Equipment (C.7.5.1) and Body Part Examined are
        # written by apply_identity below, as on the SEG
        ds.ConversionType = "WSD"
        # General Image (C.7.6.1) and General Reference (C.12.4)
        ds.InstanceNumber = k + 1
        ds.PatientOrientation = _patient_orientation(
            [float(v) for v in src.ImageOrientationPatient]
        )
        ds.BurnedInAnnotation = "YES"
        ds.DerivationDescription = (
            f"Windowed C {center:g} W {width:g}, segments of {manifest.name} "
            f"{manifest.version} blended"
        )[:1024]
        ds.DerivationCodeSequence = [_code(*_DERIVATION)]
        ref = _source_reference(src)
        ref.PurposeOfReferenceCodeSequence = [_code(*_PURPOSE)]
        ds.SourceImageSequence = [ref]
        # Common Instance Reference (C.12.2): the referenced instance's series
        series_ref = Dataset()
        series_ref.SeriesInstanceUID = source_series
        series_ref.ReferencedInstanceSequence = [_source_reference(src)]
        ds.ReferencedSeriesSequence = [series_ref]
        # SC Image (C.8.6.2)
        ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
        if src.get("PixelSpacing"):
            ds.PixelSpacing = src.PixelSpacing
        # Standard extended: the source geometry (Frame of Reference C.7.4.1, Image Plane
        # C.7.6.2), so that viewers sync the images with the source slices
        for keyword in GEOMETRY_KEYWORDS:
            if keyword in src:
                setattr(ds, keyword, src[keyword].value)
        # Image Pixel (C.7.6.3)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelRepresentation = 0
        ds.PixelData = render(k).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        result.append(apply_identity(ds, manifest, src, device_serial_number=serial))
    return result
