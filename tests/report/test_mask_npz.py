"""The web viewer's copy of a segmentation (``results/<job>/mask.npz``): written by
:func:`label_mask_npz`, read back by the viewer's :class:`MaskCache` unchanged."""

from __future__ import annotations

import numpy as np

from dicom_ai.report.preview import label_mask_npz
from dicom_ai.web.viewer import MaskCache


def test_the_viewer_reads_back_the_mask_the_worker_writes(lidc_mask, tmp_path):
    paths = [f"instances/1.2/1.2.3/1.2.3.{i}.dcm" for i in range(lidc_mask.shape[0])]
    labels = np.array([[1, 255, 0, 0], [2, 0, 0, 255]])
    data = label_mask_npz(lidc_mask, paths, labels)
    assert len(data) < lidc_mask.nbytes / 20  # deflated, not stored
    (tmp_path / "mask.npz").write_bytes(data)
    item = MaskCache().get(tmp_path / "mask.npz")
    assert item["mask"].dtype == np.uint8
    np.testing.assert_array_equal(item["mask"], lidc_mask)
    assert item["paths"] == paths
    assert item["colors"] == {1: (255, 0, 0), 2: (0, 0, 255)}
