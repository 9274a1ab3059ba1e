"""Every SEG and SR we write passes dicom3tools' dciodvfy, apart from errors its source has.

A derived object copies the patient and study modules of its source, so an error the source
already has (e.g. a missing type 2C attribute of the source series) can show up again; such
errors are compared against the source's own report and not blamed on our writer: only an error
the source does not have fails.
Warnings are printed, not failed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from scipy import ndimage

from dicom_ai.infer.volume import load_series
from dicom_ai.report import build_seg, build_sr

from .conftest import TOTALSEG, make_manifest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed")]


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy on one file; return (errors, warnings), the lines without their prefix."""
    out = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=120
    )
    errors, warnings = [], []
    for line in (out.stderr + "\n" + out.stdout).splitlines():
        line = line.strip()
        if line.startswith("Error"):
            errors.append(line.partition(" - ")[2] or line)
        elif line.startswith("Warning"):
            warnings.append(line.partition(" - ")[2] or line)
    return errors, warnings


def assert_no_errors_of_ours(obj_path: Path, source_path: Path) -> list[str]:
    """Fail on dciodvfy errors of ``obj_path`` that ``source_path`` does not have itself."""
    errors, warnings = dciodvfy(obj_path)
    source_errors, _ = dciodvfy(source_path)
    ours = [e for e in errors if e not in set(source_errors)]
    inherited = [e for e in errors if e in set(source_errors)]
    print(f"\n{obj_path.name}: {len(errors)} errors ({len(inherited)} inherited from the source)")
    for e in inherited:
        print(f"  inherited error: {e}")
    for w in warnings:
        print(f"  warning: {w}")
    assert not ours, f"dciodvfy errors of ours in {obj_path.name}: {ours}"
    return warnings


@pytest.mark.parametrize("omit", [True, False])
def test_lidc_seg_and_sr(tmp_path, small_volume, small_mask, manifest, omit) -> None:
    seg = build_seg(small_volume, small_mask, manifest, omit_empty_frames=omit)
    sr = build_sr(small_volume, small_mask, seg, manifest)
    seg.save_as(tmp_path / "seg.dcm")
    sr.save_as(tmp_path / "sr.dcm")
    source = small_volume.paths[0]
    assert_no_errors_of_ours(tmp_path / "seg.dcm", source)
    assert_no_errors_of_ours(tmp_path / "sr.dcm", source)


def test_lidc_empty_segment(tmp_path, small_volume, small_mask, manifest) -> None:
    only_right = np.where(small_mask == 1, 1, 0).astype(np.uint8)
    seg = build_seg(small_volume, only_right, manifest)
    sr = build_sr(small_volume, only_right, seg, manifest)
    seg.save_as(tmp_path / "seg.dcm")
    sr.save_as(tmp_path / "sr.dcm")
    assert_no_errors_of_ours(tmp_path / "seg.dcm", small_volume.paths[0])
    assert_no_errors_of_ours(tmp_path / "sr.dcm", small_volume.paths[0])


def test_lidc_implausible_results(tmp_path, small_volume, small_mask, manifest) -> None:
    """SRs whose groups say an implausible result (TEXT Comment items): a volume and a ratio
    out of range, and nothing found at all; dciodvfy finds nothing of ours."""
    from .test_sr import _comments, implausible_manifest

    empty = np.zeros(small_volume.shape, np.uint8)
    for name, mask, model in (("ranges", small_mask, implausible_manifest()), ("empty", empty, manifest)):
        seg = build_seg(small_volume, mask, model)
        sr = build_sr(small_volume, mask, seg, model)
        sr.save_as(tmp_path / f"sr_{name}.dcm")
        groups = hd.sr.srread(tmp_path / f"sr_{name}.dcm").content.get_volumetric_roi_measurement_groups()
        assert all(_comments(g) for g in groups), name
        assert_no_errors_of_ours(tmp_path / f"sr_{name}.dcm", small_volume.paths[0])


def _restore_totalseg(dest: Path) -> list[Path]:
    """Copy the TotalSegmentator JPEG 2000 series with its blanked UIDs restored.

    Its data sets have empty SOP Class/Instance UIDs (the file meta keeps them) and empty
    Study/Series Instance UIDs (derived here from the Frame of Reference UID, deterministic).
    """
    import pydicom
    from pydicom.uid import generate_uid

    written = []
    for src in sorted(TOTALSEG.iterdir()):
        if not src.is_file():
            continue
        ds = pydicom.dcmread(src)
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        seed = str(ds.get("FrameOfReferenceUID", "")) or "totalsegmentator-example"
        if not ds.get("StudyInstanceUID"):
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
        if not ds.get("SeriesInstanceUID"):
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
        out = dest / f"{src.name}.dcm"
        ds.save_as(out, enforce_file_format=True)
        written.append(out)
    return written


TISSUE = {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"}


def test_totalsegmentator_jpeg2000_series(tmp_path) -> None:
    if not TOTALSEG.is_dir():
        pytest.skip(f"shared test data not found at {TOTALSEG}")
    from .test_seg import read_back_mask

    paths = _restore_totalseg(tmp_path)
    volume = load_series(paths)
    assert str(volume.datasets[0].file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.90"
    manifest = make_manifest(
        name="dicom-ai-body",
        body_region="ABDOMEN",
        labels=[
            {
                "value": 1,
                "name": "Adipose tissue",
                "category": TISSUE,
                "type": {"value": "55603005", "scheme": "SCT", "meaning": "Adipose tissue"},
                "color": (255, 220, 0),
            },
            {
                "value": 2,
                "name": "Bone",
                "category": TISSUE,
                "type": {"value": "272673000", "scheme": "SCT", "meaning": "Bone"},
                "color": (240, 240, 240),
            },
        ],
    )
    hu = volume.array
    body = np.stack([ndimage.binary_fill_holes(s > -500) for s in hu])
    mask = np.zeros(hu.shape, np.uint8)
    mask[body & (hu > -190) & (hu < -30)] = 1
    mask[body & (hu > 250)] = 2
    assert (mask == 1).sum() > 10_000 and (mask == 2).sum() > 10_000

    seg = build_seg(volume, mask, manifest)
    sr = build_sr(volume, mask, seg, manifest)
    seg.save_as(tmp_path / "ts_seg.dcm")
    sr.save_as(tmp_path / "ts_sr.dcm")
    assert_no_errors_of_ours(tmp_path / "ts_seg.dcm", paths[0])
    assert_no_errors_of_ours(tmp_path / "ts_sr.dcm", paths[0])
    back = read_back_mask(tmp_path / "ts_seg.dcm", volume, manifest, omit_empty_frames=True)
    assert np.array_equal(back, mask)


def test_classification_sr(tmp_path, small_volume) -> None:
    """A classification model's SR: TID 1500 with one TID 1501 group holding the class as a
    qualitative evaluation and its probability, naming the model; dciodvfy finds nothing of ours."""
    import highdicom as hd

    from dicom_ai.infer.runtime import ClassResult
    from dicom_ai.report.sr import build_classification_sr

    classes = [{"index": 0, "name": "Chest", "code": {"value": "51185008", "scheme": "SCT", "meaning": "Thoracic structure"}},
               {"index": 1, "name": "Abdomen", "code": {"value": "113345001", "scheme": "SCT", "meaning": "Abdominal structure"},
                "attention": True}]
    manifest = make_manifest(name="dicom-ai-body-region", version="2.0.1", task="classification", labels=[],
                             classes=classes, input="slices", patch_size=(1, 64, 64), body_region="WHOLEBODY",
                             finding={"value": "123014", "scheme": "DCM", "meaning": "Target Region"})
    result = ClassResult(manifest.classes, [0.875, 0.125])
    assert result.top.name == "Chest" and not result.attention
    sr = build_classification_sr(small_volume, result, manifest)
    sr.save_as(tmp_path / "sr.dcm")
    assert_no_errors_of_ours(tmp_path / "sr.dcm", small_volume.paths[0])

    back = hd.sr.srread(tmp_path / "sr.dcm")
    assert sr.SeriesDescription == "AI Target Region classification (dicom-ai-body-region 2.0.1)"
    (group,) = back.content.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert (evaluation.name.value, evaluation.value.value) == ("123014", "51185008")
    (probability,) = group.get_measurements()
    assert probability.name.value == "122157" and probability.value == 0.875 and probability.unit.value == "1"
    measurements = next(i for i in back.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    texts = {item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
             for item in measurements.ContentSequence[0].ContentSequence if item.ValueType == "TEXT"}
    assert (texts["111001"], texts["111003"]) == ("dicom-ai-body-region", "2.0.1")  # Algorithm Name / Version
    assert len(group.source_images) == small_volume.shape[0]

    uncertain = ClassResult(manifest.classes, [0.55, 0.45], attention_below=0.6)
    assert uncertain.attention and uncertain.as_findings()["attention"] is True
    assert ClassResult(manifest.classes, [0.2, 0.8]).attention  # a class marked attention
