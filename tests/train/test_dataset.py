"""Dataset files (TOML and CSV) of a site's own cases, and folds by patient."""

from __future__ import annotations

import pytest

from dicom_ai.train.dataset import DatasetError, load_dataset, patient_folds


def test_toml_dataset_with_labels_and_relative_paths(tmp_path):
    (tmp_path / "ct1").mkdir()
    (tmp_path / "ds.toml").write_text("""
task = "segmentation"
labels = [{ value = 1, name = "Left lung", code = "44029006" }, { value = 2, name = "Right lung", code = "3341006" }]
[[cases]]
series = "ct1"
reference = "ct1.seg.dcm"
map = ["Lung_L=Left lung"]
patient = "P1"
[[cases]]
series = "1.2.826.0.1.3680043.8.498.1"
reference = "/abs/ref.nii.gz"
""")
    ds = load_dataset(tmp_path / "ds.toml")
    assert ds.task == "segmentation" and [lb.name for lb in ds.labels] == ["Left lung", "Right lung"]
    assert ds.labels[0].type.value == "44029006" and ds.labels[0].type.scheme == "SCT"
    first, second = ds.cases
    assert first.series == str(tmp_path / "ct1") and first.reference == str(tmp_path / "ct1.seg.dcm")
    assert first.mapping == ["Lung_L=Left lung"] and first.patient == "P1"
    assert second.series == "1.2.826.0.1.3680043.8.498.1"  # a Series Instance UID stays as written
    assert second.reference == "/abs/ref.nii.gz" and second.patient is None


def test_csv_dataset_takes_its_task_from_the_columns(tmp_path):
    (tmp_path / "cls.csv").write_text("series,class,patient\na/ct,chest,P1\nb/ct,abdomen,P2\n")
    ds = load_dataset(tmp_path / "cls.csv")
    assert ds.task == "classification" and [c.klass for c in ds.cases] == ["chest", "abdomen"]
    (tmp_path / "seg.csv").write_text("series,reference,map\nx,x.nii.gz,10=1;20=2\n")
    seg = load_dataset(tmp_path / "seg.csv")
    assert seg.task == "segmentation" and seg.cases[0].mapping == ["10=1", "20=2"]


@pytest.mark.parametrize("name,text,message", [
    ("a.toml", "task = 'segmentation'\n[[cases]]\nseries = 'x'\n", "has no reference"),
    ("b.toml", "task = 'segmentation'\n", "no cases"),
    ("c.csv", "series,class\nx,\n", "has no class"),
    ("d.toml", "cases = [\n", "not valid TOML"),
    ("e.json", "{}", "expected a .toml or .csv"),
    ("f.toml", "task = 'detection'\n[[cases]]\nseries = 'x'\nclass = 'y'\n", "task 'detection'"),
])
def test_bad_dataset_files_are_refused_with_the_reason(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / name)


def test_patient_folds_never_split_a_patient():
    folds = patient_folds(["b", "a", "a", "c", "d", "c"], 2)
    assert sorted(sum(folds, [])) == ["a", "b", "c", "d"] and all(folds)
    assert not set(folds[0]) & set(folds[1])
    with pytest.raises(DatasetError, match="--folds 5"):
        patient_folds(["a", "b"], 5)


def test_a_new_segmentation_model_takes_the_dataset_labels_and_no_lung_rules(tmp_path):
    """Without --from: the slice-wise design with one output per label, and none of the lung
    recipe's hole filling or plausible ranges (they describe lungs)."""
    from dicom_ai.train.dataset import base_manifest

    (tmp_path / "liver.toml").write_text("task = 'segmentation'\n"
                                         "labels = [{ value = 3, name = 'Liver', code = '10200004' }]\n"
                                         "[[cases]]\nseries = 'x'\nreference = 'y.nii.gz'\n")
    m = base_manifest(load_dataset(tmp_path / "liver.toml"), None, "1.0.0", "site-liver")
    assert (m.name, m.version, m.network.params["out_channels"]) == ("site-liver", "1.0.0", 2)
    assert m.labels[0].type.value == "10200004" and m.labels[0].plausible_volume_ml is None
    assert m.fill_holes_mm2 is None and m.fill_holes_below is None and m.plausible_volume_ratios == []
    with pytest.raises(DatasetError, match="needs labels"):
        (tmp_path / "nolabels.toml").write_text("task = 'segmentation'\n[[cases]]\nseries = 'x'\nreference = 'y'\n")
        base_manifest(load_dataset(tmp_path / "nolabels.toml"), None, "1.0.0", None)


def test_weights_trained_from_a_base_do_not_inherit_its_reduced_precision(tmp_path):
    """--from the shipped lung model (validated in bfloat16): the new weights are float32 only
    until their own validation says otherwise."""
    from dicom_ai.config import default_model_path
    from dicom_ai.package.manifest import load_manifest
    from dicom_ai.train.dataset import base_manifest

    (tmp_path / "lung.toml").write_text("task = 'segmentation'\n[[cases]]\nseries = 'x'\nreference = 'y.nii.gz'\n")
    assert load_manifest(default_model_path()).autocast == "bfloat16"
    m = base_manifest(load_dataset(tmp_path / "lung.toml"), default_model_path(), "2.0.0+site", None)
    assert m.autocast is None and m.labels == load_manifest(default_model_path()).labels
