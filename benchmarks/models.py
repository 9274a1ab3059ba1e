"""Per-model load time and warm inference time on the LIDC chest CT (275 slices), each runtime
beside the reference (the previous lung model, dicom-ai-lung 1.0.0, a 3D U-Net as a MONAI state
dict) in the same run.

Each package is measured in its own fresh process (no weights cached by an earlier one):

* load: :meth:`dicom_ai.infer.runtime.LoadedModel.load` (manifest, SHA-256 of the weights, runtime
  load, device transfer), first in the process and the median of the next ``--loads``;
* warm inference: ``predict`` on the whole series after one warm-up run, median of ``--runs``
  (preprocess + network + postprocess; the series is read once before).

    python benchmarks/models.py [--runs 3] [--loads 5] [--device cpu] [PACKAGE ...]

Without packages: dicom-ai-lung 1.0.0 (reference), the default dicom-ai-lung 2.0.0 (slice-wise 2D
U-Net) in float32 and as a node runs it (``[worker] reduced_precision``: bfloat16 where the CPU
has it natively), its TorchScript and ONNX exports (made in a temporary folder), and the shipped
body-region classifier when present. ``--reduced-precision`` loads every package given as a node
would.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIDC = REPO.parent / "shared" / "data" / "ct_chest_LIDC-IDRI-0314" / "image"


def measure(package: Path, runs: int, loads: int, device: str | None, reduced: bool = False) -> dict:
    """Run in a fresh process: load and warm-inference timings of one package."""
    import torch

    from dicom_ai.infer.runtime import load_model
    from dicom_ai.infer.volume import load_series

    volume = load_series(sorted(LIDC.glob("*.dcm")))
    t = time.perf_counter()
    model = load_model(package, device=device, reduced_precision=reduced)
    first = time.perf_counter() - t
    again = []
    for _ in range(loads):
        t = time.perf_counter()
        load_model(package, device=device, reduced_precision=reduced)
        again.append(time.perf_counter() - t)
    model.predict(volume)  # warm-up: TorchScript profiling runs, onnxruntime arena, caches
    times = []
    for _ in range(runs):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        output, _ = model.predict(volume)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    m = model.manifest
    return {"model": m.label, "runtime": m.runtime, "precision": model.precision, "task": m.task,
            "device": str(model.device),
            "weights_mb": round(model.nbytes / 2**20, 2), "load_first_s": round(first, 3),
            "load_s": round(statistics.median(again), 3), "infer_s": round(statistics.median(times), 3),
            "slices": volume.shape[0], "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--reduced-precision", action="store_true",
                        help="load the packages given as a node does ([worker] reduced_precision)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.runs, args.loads, args.device, args.reduced_precision)))
        return 0

    from dicom_ai.config import default_model_path
    from dicom_ai.models.convert import convert_package

    with tempfile.TemporaryDirectory() as tmp:
        # (package, loaded with reduced_precision)
        packages = [(p, args.reduced_precision) for p in args.packages]
        if not packages:
            packages = [(REPO / "models" / "lung-unet", False), (default_model_path(), False),
                        (default_model_path(), True)]
            for runtime in ("torchscript", "onnx"):
                packages.append((convert_package(default_model_path(), Path(tmp) / runtime, runtime), False))
            if (REPO / "models" / "body-region" / "manifest.json").is_file():
                packages.append((REPO / "models" / "body-region", False))
        rows = []
        for package, reduced in packages:
            cmd = [sys.executable, __file__, "--one", str(package), "--runs", str(args.runs), "--loads", str(args.loads)]
            if args.device:
                cmd += ["--device", args.device]
            if reduced:
                cmd.append("--reduced-precision")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = rows[0]
    print(f"LIDC-IDRI-0314, {ref['slices']} slices; device {ref['device']}, {ref['threads']} threads; "
          f"median of {args.runs} warm runs and {args.loads} loads; reference: {ref['model']} ({ref['runtime']})")
    print(f"{'model':34} {'runtime':12} {'precision':10} {'task':15} {'MB':>6} {'load 1st s':>10} {'load s':>8} "
          f"{'infer s':>8} {'load/ref':>9} {'infer/ref':>9}")
    for r in rows:
        print(f"{r['model']:34} {r['runtime']:12} {r['precision']:10} {r['task']:15} {r['weights_mb']:6.2f} "
              f"{r['load_first_s']:10.3f} "
              f"{r['load_s']:8.3f} {r['infer_s']:8.3f} {r['load_s'] / ref['load_s']:9.2f} "
              f"{r['infer_s'] / ref['infer_s']:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
