"""Reference segmentations (SEG, RTSTRUCT, NIfTI) on a source volume's grid, on real data.

Every expected value is computed here independently of :mod:`dicom_ai.evaluate.reference`: from
the SEG frames and their source image references read with pydicom, from the RTSTRUCT contour
polygons (shoelace areas), and from the training code's TotalSegmentator labels.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import peers
import pydicom
import pytest

from dicom_ai.evaluate.reference import (
    clinic_key,
    dice_scores,
    match_clinic_name,
    parse_mapping,
    read_reference,
    reference_kind,
    sample_label_map,
    segment_code,
    tg263_code,
)
from dicom_ai.infer.volume import load_series
from dicom_ai.package.manifest import Code, Label
from dicom_ai.train.labels import labels_from_totalsegmentator

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SEGS = DATA / "dcmqi" / "segmentations"
CT3 = SEGS / "ct-3slice"
LIVER_SEG = SEGS / "liver.dcm"
OVERLAP_SEG = SEGS / "partial_overlaps.dcm"
LABELMAP_SEG = SEGS / "sparse-labelmap-noppv.dcm"
IMG_24x38 = SEGS / "24x38x3" / "image"
HD = DATA / "highdicom" / "test_files"
MR = DATA / "mr_thigh_STS_001_T1"
RTSTRUCT = MR / "mask" / "1-1.dcm"
TOTALSEG_MAP = DATA / "totalsegmentator_examples" / "example_seg_dicom.nii.gz"
LUNG1 = DATA / "ct_chest_NSCLC-Radiomics-LUNG1-003_EVALUATION-ONLY"  # evaluation only (CC BY-NC 3.0)
LUNG1_RTSTRUCT = LUNG1 / "rtstruct" / "1-1.dcm"
BREAST_SEG = DATA / "seg_other_tools" / "UCSF-BR-06_BreastMRI_SEG_noReferencedSeries.dcm"

ANATOMY = Code(value="123037004", scheme="SCT", meaning="Anatomical Structure")


def label(value: int, name: str, code: str = "0000000") -> Label:
    return Label(value=value, name=name, category=ANATOMY, type=Code(value=code, scheme="SCT", meaning=name))


LIVER = label(1, "Liver", "10200004")  # SCT; the dcmqi SEG codes it as SRT T-62000
LEFT_LUNG = label(1, "Left lung", "44029006")
RIGHT_LUNG = label(2, "Right lung", "3341006")


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


@pytest.fixture(scope="module", autouse=True)
def _data() -> None:
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")


@pytest.fixture(scope="module")
def ct3():
    return load_series(files(CT3))


@pytest.fixture(scope="module")
def mr():
    return load_series(files(MR / "image"))


def seg_frames_on_volume(seg_path: Path, volume) -> dict[int, np.ndarray]:
    """Segment number -> bool (slices, rows, columns), placed by each frame's source image."""
    ds = pydicom.dcmread(seg_path)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    k_of = {d.SOPInstanceUID: k for k, d in enumerate(volume.datasets)}
    out: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(volume.shape, dtype=bool))
    for f, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        seg = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[seg][k_of[uid]] |= pixels[f] > 0
    return dict(out)


# --- SEG ---------------------------------------------------------------------------------


def test_seg_liver_lands_on_its_source_slices(ct3):
    ref = read_reference(LIVER_SEG, ct3, [LIVER])
    assert ref.kind == "SEG" and reference_kind(LIVER_SEG) == "SEG"
    assert ref.matched == {1: "Liver"} and ref.unmatched == []
    assert ref.mask.dtype == np.uint8 and ref.mask.shape == ct3.shape
    frames = pydicom.dcmread(LIVER_SEG).pixel_array
    assert ref.mask.sum() > 0
    assert int((ref.mask == 1).sum()) == int((frames > 0).sum())
    expected = seg_frames_on_volume(LIVER_SEG, ct3)[1]
    np.testing.assert_array_equal(ref.mask == 1, expected)
    assert dice_scores(ref.mask, ref, [LIVER]) == {1: 1.0}
    assert dice_scores(np.zeros_like(ref.mask), ref, [LIVER]) == {1: 0.0}


def test_dice_against_a_shortened_mask(ct3):
    ref = read_reference(LIVER_SEG, ct3, [LIVER])
    pred = ref.mask.copy()
    pred[0] = 0
    a, b = int((pred == 1).sum()), int((ref.mask == 1).sum())
    assert 0 < a < b
    assert dice_scores(pred, ref, [LIVER])[1] == pytest.approx(2 * a / (a + b), abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        dice_scores(pred[:2], ref, [LIVER])


def test_seg_segment_to_label_rules(ct3):
    # SNOMED RT T-62000 in the SEG = SNOMED CT 10200004 in the manifest, whatever the name
    by_code = read_reference(LIVER_SEG, ct3, [label(4, "Hepar", "10200004")])
    assert by_code.matched == {4: "Liver"} and (by_code.mask == 4).sum() == 107098
    by_name = read_reference(LIVER_SEG, ct3, [label(2, "LIVER", "1234")])
    assert by_name.matched == {2: "Liver"}
    by_number = read_reference(LIVER_SEG, ct3, [LIVER, label(3, "Organ")], {"1": 3})
    assert by_number.matched == {3: "Liver"} and set(np.unique(by_number.mask)) == {0, 3}
    none = read_reference(LIVER_SEG, ct3, [LEFT_LUNG, RIGHT_LUNG])
    assert none.matched == {} and none.unmatched == ["Liver"] and not none.mask.any()
    assert dice_scores(none.mask, none, [LEFT_LUNG, RIGHT_LUNG]) == {1: None, 2: None}


def test_seg_overlapping_segments_the_smaller_wins(ct3):
    names = ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]  # segment numbers 1..5
    labels = [label(i + 1, n) for i, n in enumerate(names)]
    ref = read_reference(OVERLAP_SEG, ct3, labels)
    assert ref.matched == {i + 1: n for i, n in enumerate(names)} and ref.unmatched == []
    segs = seg_frames_on_volume(OVERLAP_SEG, ct3)
    assert sorted(segs) == [1, 2, 3, 4, 5]
    union = np.any(np.stack(list(segs.values())), axis=0)
    np.testing.assert_array_equal(ref.mask > 0, union)
    sizes = {n: int(m.sum()) for n, m in segs.items()}
    count = np.sum(np.stack(list(segs.values())), axis=0)
    assert (count > 1).any()  # the file is the overlapping case
    for voxel in zip(*np.nonzero(union), strict=False):
        covering = [n for n in segs if segs[n][voxel]]
        assert ref.mask[voxel] == min(covering, key=lambda n: (sizes[n], n))


def test_seg_labelmap_sparse_frames():
    volume = load_series(files(IMG_24x38))
    ref = read_reference(LABELMAP_SEG, volume, [LIVER])
    assert ref.matched == {1: "Liver"} and ref.unmatched == []  # the Background segment 0 is no segment
    ds = pydicom.dcmread(LABELMAP_SEG)
    k_of = {d.SOPInstanceUID: k for k, d in enumerate(volume.datasets)}
    expected = np.zeros(volume.shape, dtype=bool)
    for f, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = k_of[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        expected[k] = ds.pixel_array[f] == 1
    assert expected.any() and not expected.all(axis=(1, 2)).any()
    np.testing.assert_array_equal(ref.mask == 1, expected)
    assert sum(not m.any() for m in ref.mask) == 1  # 2 frames for 3 slices


def test_seg_written_by_highdicom_single_frame():
    volume = load_series([HD / "ct_image.dcm"])
    seg = HD / "seg_image_ct_binary_single_frame.dcm"
    ref = read_reference(seg, volume, [label(1, "first segment")])
    frame = pydicom.dcmread(seg).pixel_array
    assert frame.sum() > 0
    np.testing.assert_array_equal(ref.mask[0] == 1, frame > 0)


def test_seg_of_another_series_is_refused(ct3):
    with pytest.raises(ValueError, match="none of which is a slice of this series"):
        read_reference(HD / "seg_image_ct_binary.dcm", ct3, [LIVER])
    with pytest.raises(ValueError, match="none of which is a slice of this series"):
        read_reference(LIVER_SEG, load_series(files(IMG_24x38)), [LIVER])


# --- RTSTRUCT ----------------------------------------------------------------------------


def shoelace_ml(roi_name: str) -> tuple[float, set[str]]:
    """Sum over the ROI's contours of polygon area (shoelace, in the image plane) times the
    slice spacing, in mL; and the SOP Instance UIDs the contours reference."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files(MR / "image")]
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    u, v = iop[:3], iop[3:]
    normal = np.cross(u, v)
    along = sorted(float(np.asarray(h.ImagePositionPatient, dtype=float) @ normal) for h in headers)
    spacing = float(np.median(np.diff(along)))
    ds = pydicom.dcmread(RTSTRUCT)
    number = next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == roi_name)
    rc = next(c for c in ds.ROIContourSequence if c.ReferencedROINumber == number)
    area, uids = 0.0, set()
    for c in rc.ContourSequence:
        pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        x, y = pts @ u, pts @ v
        area += 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        uids.add(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
    return area * spacing / 1000.0, uids


def test_rtstruct_gtv_mass_volume_matches_its_polygons(mr):
    labels = [label(1, "Tumour")]
    ref = read_reference(RTSTRUCT, mr, labels, parse_mapping(["GTV_Mass=Tumour"], labels))
    assert ref.kind == "RTSTRUCT" and reference_kind(RTSTRUCT) == "RTSTRUCT"
    assert ref.matched == {1: "GTV_Mass"} and ref.unmatched == ["GTV_Edema"] and ref.notes == []
    ml = float((ref.mask == 1).sum()) * mr.voxel_volume_ml
    expected_ml, uids = shoelace_ml("GTV_Mass")
    assert expected_ml > 50
    # pixel-centre rasterization of a polygon this large keeps its area within a fraction of a
    # percent (measured: 0.01 %); a fill that also takes pixels the outline touches is ~3 % over
    assert ml == pytest.approx(expected_ml, rel=0.01)
    # each contour is on the slice it references, and only there
    slices = {k for k, d in enumerate(mr.datasets) if d.SOPInstanceUID in uids}
    assert {k for k in range(mr.shape[0]) if ref.mask[k].any()} == slices


def test_rtstruct_nested_rois_keep_the_smaller(mr):
    mass = read_reference(RTSTRUCT, mr, [label(1, "GTV_Mass")])
    edema = read_reference(RTSTRUCT, mr, [label(2, "gtv_edema")])
    assert edema.matched == {2: "GTV_Edema"} and edema.unmatched == ["GTV_Mass"]
    edema_ml, _ = shoelace_ml("GTV_Edema")
    assert float(edema.mask.sum() / 2) * mr.voxel_volume_ml == pytest.approx(edema_ml, rel=0.01)
    both = read_reference(RTSTRUCT, mr, [label(1, "GTV_Mass"), label(2, "GTV_Edema")])
    np.testing.assert_array_equal(both.mask == 1, mass.mask == 1)  # the mass is inside the edema
    np.testing.assert_array_equal(both.mask > 0, (mass.mask > 0) | (edema.mask > 0))
    scores = dice_scores(mass.mask, both, [label(1, "GTV_Mass"), label(2, "GTV_Edema")])
    assert scores == {1: 1.0, 2: 0.0}


def test_rtstruct_on_another_series_is_refused(ct3):
    with pytest.raises(ValueError, match="RTSTRUCT references 40 image"):
        read_reference(RTSTRUCT, ct3, [label(1, "GTV_Mass")])


# --- NIfTI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def totalseg_volume(tmp_path_factory):
    return load_series(peers.restore_totalseg_series(tmp_path_factory.mktemp("totalseg")))


def test_nifti_lobes_mapped_to_lungs_equal_the_training_labels(totalseg_volume):
    labels = [LEFT_LUNG, RIGHT_LUNG]
    mapping = parse_mapping(["10,11=Left lung", "12,13,14=2"], labels)
    assert mapping == {"10": 1, "11": 1, "12": 2, "13": 2, "14": 2}
    ref = read_reference(TOTALSEG_MAP, totalseg_volume, labels, mapping)
    assert ref.kind == "NIFTI" and ref.matched == {1: "10, 11", 2: "12, 13, 14"}
    np.testing.assert_array_equal(ref.mask, labels_from_totalsegmentator(totalseg_volume, TOTALSEG_MAP))
    # this abdominal example holds no lung lobe: the lungs are annotated as absent
    assert not ref.mask.any() and len(ref.notes) == 5 and "1" in ref.unmatched and "5" in ref.unmatched
    assert dice_scores(ref.mask, ref, labels) == {1: None, 2: None}
    assert dice_scores((totalseg_volume.array < -500).astype(np.uint8), ref, labels)[1] == 0.0
    with pytest.raises(ValueError, match="by value"):
        read_reference(TOTALSEG_MAP, totalseg_volume, labels, {"Liver": 1})


def test_nifti_organs_on_the_dicom_grid(totalseg_volume):
    """The label map is on the series' own grid: every voxel must land once, slice for slice."""
    data = np.asarray(nib.load(TOTALSEG_MAP).dataobj)
    labels = [label(1, "Liver", "10200004"), label(2, "Spleen", "78961009")]
    ref = read_reference(TOTALSEG_MAP, totalseg_volume, labels, parse_mapping(["5=Liver", "1=Spleen"], labels))
    assert ref.matched == {1: "5", 2: "1"} and ref.notes == []
    for value, organ in ((1, 5), (2, 1)):
        per_slice = [int((ref.mask[k] == value).sum()) for k in range(ref.mask.shape[0])]
        expected = [int((data[:, :, z] == organ).sum()) for z in range(data.shape[2])]
        assert sum(expected) > 100000
        assert per_slice in (expected, expected[::-1])
    # without a mapping, values that are manifest label values are taken as they are
    identity = read_reference(TOTALSEG_MAP, totalseg_volume, [label(5, "organ five")])
    assert identity.matched == {5: "5"} and "1" in identity.unmatched
    np.testing.assert_array_equal(identity.mask == 5, sample_label_map(totalseg_volume, TOTALSEG_MAP) == 5)
    assert (identity.mask == 5).sum() == (data == 5).sum()


def test_nifti_of_another_region_is_refused(ct3):
    with pytest.raises(ValueError, match="does not overlap"):
        read_reference(TOTALSEG_MAP, ct3, [LIVER])


# --- clinic names (TG-263 and the like) ----------------------------------------------------

LEFT_NAMES = ["Lung-Left", "Lung_L", "LUNG_LT", "Left Lung", "L Lung", "lung left", "LeftLung", "Lung L",
              "lung_l", "LUNG-LEFT", "Lung_Lt", "Lung sin", "left_lung"]
RIGHT_NAMES = ["Lung-Right", "Lung_R", "LUNG_RT", "Right Lung", "R Lung", "lung right", "RightLung", "Lung R",
               "RIGHT LUNG", "Lung_dx"]
NOT_ONE_LUNG = ["Lungs", "Lung_Total", "Lungs-GTV", "GTV-1", "gtv-2", "Lung-GTV", "LungGTV", "PTV_Lung_L",
                "zLung_L", "z_Lung_R", "Heart", "Esophagus", "Spinal-Cord", "Lung", "Lung_L_R", "Lung_L_PRV05",
                "LUNGL", "Lung lobe L"]


@pytest.mark.parametrize("name", LEFT_NAMES + RIGHT_NAMES + NOT_ONE_LUNG)
def test_clinic_names_of_the_lungs(name):
    from dicom_ai.train.lung import LUNG_LABELS

    expected = 1 if name in LEFT_NAMES else 2 if name in RIGHT_NAMES else None
    assert match_clinic_name(name, LUNG_LABELS) == expected
    # the label names alone (no usable code) give the same answer, and the codes alone too
    by_name = [label(1, "Left lung"), label(2, "Right lung")]  # no code, meaning = name
    assert match_clinic_name(name, by_name) == expected
    coded = [label(7, "Pulmo sinister", "44029006"), label(8, "Pulmo dexter", "3341006")]
    assert match_clinic_name(name, coded) == {1: 7, 2: 8, None: None}[expected]
    # never the other side: with only the other lung as a label, a lateral name matches nothing
    if expected == 1:
        assert match_clinic_name(name, [RIGHT_LUNG]) is None
    if expected == 2:
        assert match_clinic_name(name, [LEFT_LUNG]) is None


def test_clinic_name_rules():
    assert clinic_key("Lung-Left") == clinic_key("LUNG_LT") == clinic_key("Left Lung") == (("lung",), "left")
    cord = (("cord", "spinal"), None)
    assert clinic_key("SpinalCord") == clinic_key("Spinal-Cord") == clinic_key("spinal cord") == cord
    assert clinic_key("Bowel_Small") == clinic_key("Small bowel")
    for helper in ["GTV-1", "Lung-GTV", "zLung_L", "Lung_L_R", "CTV_60", "ITV", "PTVp"]:
        assert clinic_key(helper) is None, helper
    assert clinic_key("zygoma") == (("zygoma",), None)  # a z word is no z prefix
    # TG-263 names map by SNOMED CT code; the total lungs are their own concept, never one side
    assert tg263_code("Lung-Left") == tg263_code("Lung_L") == "44029006"
    assert tg263_code("LUNG_RT") == "3341006"
    assert tg263_code("Lungs") == "74101002" and tg263_code("Lung_Total") is None
    assert tg263_code("Spinal-Cord") == "2748008" and tg263_code("esophagus") == "32849002"
    assert tg263_code("Kidney_L") == "18639004" and tg263_code("Kidney R") == "9846003"
    organs = [label(1, "Heart", "80891009"), label(2, "Cor", "80891009")]
    assert match_clinic_name("HEART", organs) == 1  # by code: the first label of that code
    assert match_clinic_name("Heart", [label(3, "Cardiac muscle"), label(4, "heart")]) == 4  # by name
    # a name that fits two labels equally (same structure and side, no TG-263 code) matches none
    assert match_clinic_name("Lung_L", [label(1, "Left lung"), label(2, "Lung, left")]) is None


@pytest.fixture(scope="module")
def lung1():
    if not LUNG1.is_dir():
        pytest.skip(f"real data not found at {LUNG1}")
    return load_series(files(LUNG1 / "image"))


def test_clinical_rtstruct_matches_the_lungs_by_their_clinic_names(lung1):
    """LUNG1-003's clinical RTSTRUCT (ROIs Lung-Left, Lung-Right, Heart, ...) scores a lung model
    without --map; each lung lands on its own side of the patient (LPS: +x is the patient's left)."""
    from dicom_ai.train.lung import LUNG_LABELS

    ref = read_reference(LUNG1_RTSTRUCT, lung1, LUNG_LABELS)
    assert ref.kind == "RTSTRUCT" and ref.matched == {1: "Lung-Left", 2: "Lung-Right"}
    assert sorted(ref.unmatched) == sorted(["Heart", "Esophagus", "Spinal-Cord", "GTV-1", "gtv-2", "gtv-3"])
    assert ref.no_match_message() is None
    x = {}
    for value in (1, 2):
        voxels = np.argwhere(ref.mask == value)
        assert len(voxels) * lung1.voxel_volume_ml > 500  # a lung, not a nodule
        x[value] = float(lung1.index_to_patient(voxels.mean(axis=0)[None])[0, 0])
    assert x[1] > 0 > x[2], x
    # each label is on exactly the slices its ROI's contours reference (read with pydicom)
    ds = pydicom.dcmread(LUNG1_RTSTRUCT)
    number = {str(r.ROIName): r.ROINumber for r in ds.StructureSetROISequence}
    k_of = {d.SOPInstanceUID: k for k, d in enumerate(lung1.datasets)}
    for value, roi in ((1, "Lung-Left"), (2, "Lung-Right")):
        rc = next(c for c in ds.ROIContourSequence if c.ReferencedROINumber == number[roi])
        slices = {k_of[c.ContourImageSequence[0].ReferencedSOPInstanceUID] for c in rc.ContourSequence}
        assert {k for k in range(lung1.shape[0]) if (ref.mask[k] == value).any()} == slices
    # an explicit mapping still comes first: swapped on purpose, it is obeyed
    swapped = read_reference(LUNG1_RTSTRUCT, lung1, LUNG_LABELS, {"Lung-Left": 2, "Lung-Right": 1})
    assert swapped.matched == {1: "Lung-Right", 2: "Lung-Left"}
    np.testing.assert_array_equal(swapped.mask == 2, ref.mask == 1)


def test_no_match_message_lists_the_names_found(lung1, mr, ct3):
    ref = read_reference(LUNG1_RTSTRUCT, lung1, [LIVER])
    assert ref.matched == {} and not ref.mask.any()
    message = ref.no_match_message()
    assert message is not None
    assert message.startswith("no ROI of 1-1.dcm matches a label of the model (labels: 1=Liver)")
    rois = [str(r.ROIName) for r in pydicom.dcmread(LUNG1_RTSTRUCT, stop_before_pixels=True).StructureSetROISequence]
    assert len(rois) == 8 and "ROIs found: " + ", ".join(rois) + ";" in message
    assert message.endswith("map them with --map NAME=LABEL")
    mr_message = read_reference(RTSTRUCT, mr, [LEFT_LUNG, RIGHT_LUNG]).no_match_message()
    assert mr_message == (
        "no ROI of 1-1.dcm matches a label of the model (labels: 1=Left lung, 2=Right lung); "
        "ROIs found: GTV_Mass, GTV_Edema; map them with --map NAME=LABEL"
    )
    seg_message = read_reference(LIVER_SEG, ct3, [LEFT_LUNG, RIGHT_LUNG]).no_match_message()
    assert seg_message is not None
    assert "no segment of liver.dcm" in seg_message and "segments found: Liver;" in seg_message
    assert read_reference(LIVER_SEG, ct3, [LIVER]).no_match_message() is None


def _recoded_liver_seg(tmp_path: Path, name: str, code: tuple[str, str, str], modifier=None, region=None) -> Path:
    """The dcmqi liver SEG with its one segment relabelled and recoded."""
    ds = pydicom.dcmread(LIVER_SEG)
    segment = ds.SegmentSequence[0]
    segment.SegmentLabel = name
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    if modifier is not None:
        mod = pydicom.Dataset()
        mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = modifier
        item.SegmentedPropertyTypeModifierCodeSequence = [mod]
    segment.SegmentedPropertyTypeCodeSequence = [item]
    if region is not None:
        segment.AnatomicRegionSequence = [region]
    elif "AnatomicRegionSequence" in segment:
        del segment.AnatomicRegionSequence
    out = tmp_path / f"{name}.dcm"
    ds.save_as(out)
    return out


def test_seg_lateral_codes_and_clinic_labels(ct3, tmp_path):
    labels = [LEFT_LUNG, RIGHT_LUNG]
    lung = ("T-28000", "SRT", "Lung")
    # "Lung" + laterality modifier (SNOMED RT or CT) is that side's lung, whatever the label says
    left = read_reference(_recoded_liver_seg(tmp_path, "segment A", lung, ("G-A101", "SRT", "Left")), ct3, labels)
    assert left.matched == {1: "segment A"} and set(np.unique(left.mask)) == {0, 1}
    right = read_reference(_recoded_liver_seg(tmp_path, "segment B", lung, ("24028007", "SCT", "Right")), ct3, labels)
    assert right.matched == {2: "segment B"}
    # "Lung" without a side is no single lung
    assert read_reference(_recoded_liver_seg(tmp_path, "segment C", lung), ct3, labels).matched == {}
    # a code that fits no label: the Segment Label as clinics write it
    by_name = read_reference(_recoded_liver_seg(tmp_path, "Lung_R", ("T-D0050", "SRT", "Tissue")), ct3, labels)
    assert by_name.matched == {2: "Lung_R"}
    # the code comes before the name: a "Left lung"-coded segment labelled Lung_R goes left
    coded = read_reference(_recoded_liver_seg(tmp_path, "Lung_R", ("44029006", "SCT", "Left lung")), ct3, labels)
    assert coded.matched == {1: "Lung_R"}
    # a tumour in the left lung's region is not the left lung
    region = pydicom.Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "44029006", "SCT", "Left lung"
    tumour = _recoded_liver_seg(tmp_path, "Mass", ("M-80003", "SRT", "Neoplasm, Primary"), region=region)
    assert read_reference(tumour, ct3, labels).matched == {}


def test_seg_laterality_from_the_anatomic_region_of_the_same_structure():
    """A real SEG (UCSF breast MRI) codes its segment as type "Breast" (private MRSC code) in the
    Anatomic Region "Breast" with the modifier "Left" (SNOMED RT G-A101): the left breast."""
    segment = pydicom.dcmread(BREAST_SEG, stop_before_pixels=True).SegmentSequence[0]
    assert segment.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == "G-A101"
    assert segment_code(segment) == "80248007"  # SNOMED CT Left breast structure
    without = pydicom.Dataset()
    without.SegmentedPropertyTypeCodeSequence = segment.SegmentedPropertyTypeCodeSequence
    assert segment_code(without) == "B-1000"  # no region: the type code as it is


# --- file types and --map ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, message",
    [
        (DATA / "README.md", "neither a DICOM SEG / RTSTRUCT file nor a .nii"),
        (CT3 / "01.dcm", "modality 'CT'"),
        (DATA / "dcmqi" / "sr-example" / "sr.dcm", "modality 'SR'"),
        (DATA / "no-such-file.dcm", "no such file"),
    ],
)
def test_unknown_reference_types_are_refused(ct3, path, message):
    with pytest.raises(ValueError, match=message):
        read_reference(path, ct3, [LIVER])


def test_parse_mapping():
    labels = [LEFT_LUNG, RIGHT_LUNG]
    assert parse_mapping(["GTV_Mass=1", "liver = right LUNG"], labels) == {"GTV_Mass": 1, "liver": 2}
    assert parse_mapping(["Neoplasm, Secondary=2"], labels) == {"Neoplasm, Secondary": 2}
    for bad, message in [
        ("GTV_Mass", "expected REFERENCE=LABEL"),
        ("=1", "expected REFERENCE=LABEL"),
        ("GTV_Mass=3", "not a label of the model"),
        ("GTV_Mass=Liver", "not a label of the model"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_mapping([bad], labels)
    with pytest.raises(ValueError, match="mapped to both"):
        parse_mapping(["10=1", "10=2"], labels)
