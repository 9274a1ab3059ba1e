"""Post-processing and result encoding (SEG + SR) on the LIDC chest CT (275 slices), each beside
a reference in the same run.

The network output is real: the shipped active lung model (``models/lung-unet-2d``; another
with ``--package``) runs once on the series (:meth:`dicom_ai.infer.runtime.SegmentationModel.scores`), then

* post-processing, ours: :meth:`~dicom_ai.infer.runtime.SegmentationModel.postprocess`
  (upsampling and argmax within the bounding box of the non-background classes on the model's
  device, scores computed only where the model pixels around an output pixel do not settle its
  class; largest component labelled voxel by voxel only within the box of the largest
  component of 4x4x4 blocks; holes enclosed in 3D found from the in-slice holes, without a
  second labelling); reference: the same steps on the whole
  volume as the node did them before (every output slice upsampled and its argmax taken,
  ``scipy.ndimage.find_objects`` over the whole mask, holes filled slice by slice), kept here as
  :func:`reference_postprocess`. The two masks must be equal voxel for voxel;
* encoding, ours: what the worker times as ``report`` (``measure_labels``,
  ``check_plausibility``, ``build_seg``, ``build_sr``, both written with ``save_as``), and the
  SEG alone (``build_seg`` + writing); reference: the straightforward highdicom call,
  ``hd.seg.Segmentation`` with default arguments on the same mask, written the same way.

Prints seconds (median of ``--runs``) and ratios ours / reference.

    python benchmarks/results.py [--runs 3] [--package models/lung-unet-2d] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
LIDC = REPO.parent / "shared" / "data" / "ct_chest_LIDC-IDRI-0314" / "image"
PACKAGE = REPO / "models" / "lung-unet-2d"  # the shipped active lung model (2.0.0)
sys.path.insert(0, str(REPO / "tests"))


def _argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    best = scores[0].clone()
    index = torch.zeros(best.shape, dtype=torch.uint8, device=scores.device)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        index[better] = c
        best = torch.maximum(best, scores[c])
    return index


def reference_upsample_argmax(logits: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear upsampling + argmax of every output slice of the whole volume, as before."""
    C, d, h, w = logits.shape
    D, H, W = size
    out = torch.empty((D, H, W), dtype=torch.uint8, device=logits.device)
    src = ((torch.arange(D, dtype=torch.float64) + 0.5) * (d / D) - 0.5).clamp(0, d - 1)
    lo_t = src.floor().long()
    frac = (src - lo_t.double()).tolist()
    lo: list[int] = lo_t.tolist()
    planes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def plane(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k not in planes:
            part = logits[:, k].float()
            if (h, w) != (H, W):
                part = F.interpolate(part[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            planes[k] = (part, _argmax_classes(part))
        return planes[k]

    for z in range(D):
        a = lo[z]
        b = min(a + 1, d - 1)
        for k in [k for k in planes if k < a]:
            del planes[k]
        scores_a, index_a = plane(a)
        f = frac[z]
        if b == a or f == 0.0:
            out[z] = index_a
            continue
        scores_b, index_b = plane(b)
        differ = index_a != index_b
        result = index_a.clone()
        if bool(differ.any()):
            result[differ] = _argmax_classes(scores_a[:, differ] * (1 - f) + scores_b[:, differ] * f)
        out[z] = result
    return out


def reference_postprocess(model, logits: torch.Tensor, tf, volume) -> np.ndarray:
    """The post-processing as it was: whole-volume upsampling, whole-mask ``find_objects``."""
    from infer.test_fill_holes import per_slice_fill_holes  # the per-slice definition

    from dicom_ai.infer.postprocess import remap_labels
    from dicom_ai.infer.preprocess import from_canonical

    mask = from_canonical(reference_upsample_argmax(logits, tf.shape), tf).contiguous().cpu().numpy()
    m = model.manifest
    labels = [lab.value for lab in m.labels]
    remap_labels(mask, [0] + labels)
    boxes = {i + 1: box for i, box in enumerate(ndi.find_objects(mask)) if box is not None}
    struct = ndi.generate_binary_structure(3, 3)
    for value in labels:
        if value not in boxes:
            continue
        sub = mask[boxes[value]]
        comp, n = ndi.label(sub == value, structure=struct)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            sub[(comp != 0) & (comp != int(np.argmax(sizes)))] = 0
    if m.fill_holes_mm2:
        per_slice_fill_holes(mask, labels, volume.spacing, m.fill_holes_mm2, volume.array, m.fill_holes_below)
    return mask


def _write(obj) -> int:
    buf = io.BytesIO()
    obj.save_as(buf, enforce_file_format=True)
    return buf.tell()


class Timing:
    """Median wall-clock and CPU (this process, all threads) seconds of some runs, and the
    fastest wall-clock run."""

    def __init__(self, wall: list[float], cpu: list[float]) -> None:
        self.wall = statistics.median(wall)
        self.cpu = statistics.median(cpu)
        self.best = min(wall)

    def __str__(self) -> str:
        return f"{self.wall:.3f} s (CPU {self.cpu:.3f} s, fastest {self.best:.3f} s)"

    def ratio(self, reference: Timing) -> str:
        return f"ratio {self.wall / reference.wall:.2f} (CPU {self.cpu / reference.cpu:.2f})"


def timed(fn: Callable[[], object], runs: int, sync: Callable[[], None]) -> tuple[Timing, object]:
    """Timing of ``runs`` calls (after one warm-up call) and the last result. The CPU time is
    given beside the wall-clock time: on a shared machine it is the steadier of the two."""
    result = fn()
    wall, cpu = [], []
    for _ in range(runs):
        sync()
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        sync()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return Timing(wall, cpu), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--package", type=Path, default=PACKAGE, help="a segmentation model package")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    import highdicom as hd

    import dicom_ai
    from dicom_ai.infer.runtime import SegmentationModel
    from dicom_ai.infer.volume import load_series
    from dicom_ai.report.identity import MANUFACTURER
    from dicom_ai.report.measure import measure_labels
    from dicom_ai.report.plausibility import check_plausibility
    from dicom_ai.report.seg import build_seg, segment_description
    from dicom_ai.report.sr import build_sr

    volume = load_series(sorted(LIDC.glob("*.dcm")))
    model = SegmentationModel.load(args.package, device=args.device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    logits, tf, net = model.scores(volume)
    print(f"{model.manifest.label} on {model.device} ({torch.get_num_threads()} threads), "
          f"{volume.shape[0]} slices; network output {tuple(logits.shape)} in {net['inference']:.2f} s")

    ours_s, mask = timed(lambda: model.postprocess(logits, tf, volume), args.runs, sync)
    ref_s, ref_mask = timed(lambda: reference_postprocess(model, logits, tf, volume), args.runs, sync)
    differing = int(np.count_nonzero(mask != ref_mask))
    print(f"post-processing: ours {ours_s}, reference (whole volume) {ref_s}, "
          f"{ours_s.ratio(ref_s)}; differing voxels {differing}")

    manifest = model.manifest

    def report() -> tuple[int, int]:
        measurements = measure_labels(volume, mask, manifest)
        issues = check_plausibility(measurements, manifest)
        seg = build_seg(volume, mask, manifest, device_serial_number="BENCH")
        sr = build_sr(volume, mask, seg, manifest, device_serial_number="BENCH",
                      measurements=measurements, plausibility=issues)
        return _write(seg), _write(sr)

    def ours_seg() -> int:
        return _write(build_seg(volume, mask, manifest, device_serial_number="BENCH"))

    series_uid = str(volume.datasets[0].SeriesInstanceUID)
    descriptions = [segment_description(label, n, manifest, hd.UID())
                    for n, label in enumerate(manifest.labels, start=1)]
    numbers = np.zeros(256, np.uint8)
    for n, label in enumerate(manifest.labels, start=1):
        numbers[label.value] = n
    # segment numbers for highdicom: the mask itself when the label values are 1..n
    pixels = mask if np.array_equal(numbers[:len(manifest.labels) + 1], np.arange(len(manifest.labels) + 1)) \
        else numbers[mask]

    def reference_seg() -> int:
        seg = hd.seg.Segmentation(
            source_images=volume.datasets, pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=901, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=manifest.name,
            software_versions=dicom_ai.__version__, device_serial_number="BENCH",
        )
        assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == series_uid
        return _write(seg)

    report_s, sizes = timed(report, args.runs, sync)
    seg_s, _ = timed(ours_seg, args.runs, sync)
    hd_s, _ = timed(reference_seg, args.runs, sync)
    print(f"encoding SEG+SR (measure, plausibility, SEG, SR, both written; {sizes[0] / 2**20:.1f} + "
          f"{sizes[1] / 2**10:.0f} KiB): ours {report_s}, reference SEG alone {hd_s}, "
          f"{report_s.ratio(hd_s)}")
    print(f"encoding SEG alone (built and written): ours {seg_s}, reference "
          f"(hd.seg.Segmentation, default arguments) {hd_s}, {seg_s.ratio(hd_s)}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
