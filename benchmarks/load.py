"""Series loading speed: :func:`dicom_ai.infer.volume.load_series` beside the plain sequential
loop, in the same run (a measurement).

Loads the repository's JPEG-LS lossless demo series (LIDC-IDRI-0314, 275 slices) and the
same series uncompressed (Implicit VR Little Endian, ``../shared/data``) as the worker's
``load`` split does (``load_series`` + ``check_one_patient``), and with a reference: the headers
read as ``read_headers`` reads them, then every file read whole with ``pydicom.dcmread`` and
decoded with ``Dataset.pixel_array`` (pydicom's default plugin order) one after the other, in
Image Position order, rescaled into one float32 array. Runs alternate between the two so that
both see the same machine load. Prints the median wall-clock seconds of ``--runs`` runs, the
ratio reference / load_series, the median CPU seconds (this process and its decoding
processes), whether the two volumes are bit-identical, and the load average (on a busy
machine the wall-clock figures say more about the neighbours than about the code).

    python benchmarks/load.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import pydicom

from dicom_ai.infer.volume import check_one_patient, decode_processes, load_series, read_headers

REPO = Path(__file__).resolve().parents[1]
SERIES = {
    "JPEG-LS lossless (demo)": REPO / "demo" / "ct_chest_LIDC-IDRI-0314" / "image",
    "Implicit VR LE (shared)": REPO.parent / "shared" / "data" / "ct_chest_LIDC-IDRI-0314" / "image",
}


def reference(paths: list[Path]) -> np.ndarray:
    """The sequential loop: headers, order along the slice normal (axial series: z), then
    ``dcmread(path).pixel_array`` per file, ``slope * stored + intercept`` in float32."""
    slices = read_headers(paths)
    slices.sort(key=lambda s: float(s[1].ImagePositionPatient[2]))
    first = slices[0][1]
    array = np.empty((len(slices), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, (path, header) in enumerate(slices):
        pixels = pydicom.dcmread(path).pixel_array
        out = array[k]
        out[...] = pixels
        slope = float(header.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept != 0.0:
            out += np.float32(intercept)
    check_one_patient([ds for _, ds in slices])
    return array


def worker_load(paths: list[Path]) -> np.ndarray:
    """What the worker times as ``load``."""
    volume = load_series(paths)
    check_one_patient(volume.datasets)
    return volume.array


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, paths: list[Path]) -> tuple[np.ndarray, float, float]:
    """(result, wall-clock seconds, CPU seconds) of ``fn(paths)``."""
    cpu, t = cpu_seconds(), time.perf_counter()
    result = fn(paths)
    return result, time.perf_counter() - t, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}, pydicom {pydicom.__version__}")
    print(f"{'series':26} {'slices':>6} {'procs':>5} {'load_series s':>13} {'reference s':>11} {'ratio':>6} "
          f"{'cpu s':>6} {'ref cpu s':>9}  identical  load avg")
    for name, folder in SERIES.items():
        if not folder.is_dir():
            print(f"{name:26} missing: {folder}")
            continue
        paths = sorted(folder.glob("*.dcm"))
        syntax = pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
        # native pixel data are read in this process (load_series' rule)
        procs = decode_processes(len(paths)) if syntax.is_compressed or syntax.is_deflated else 1
        new_t: list[float] = []
        ref_t: list[float] = []
        new_cpu: list[float] = []
        ref_cpu: list[float] = []
        identical = True
        for _ in range(args.runs):
            new, wall, cpu = timed(worker_load, paths)
            new_t.append(wall)
            new_cpu.append(cpu)
            ref, wall, cpu = timed(reference, paths)
            ref_t.append(wall)
            ref_cpu.append(cpu)
            identical = identical and new.dtype == ref.dtype and np.array_equal(new, ref)
            del new, ref
        new_s, ref_s = statistics.median(new_t), statistics.median(ref_t)
        print(f"{name:26} {len(paths):6d} {procs:5d} {new_s:13.2f} {ref_s:11.2f} "
              f"{ref_s / new_s:6.2f} {statistics.median(new_cpu):6.2f} {statistics.median(ref_cpu):9.2f}  "
              f"{str(identical):9}  {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
