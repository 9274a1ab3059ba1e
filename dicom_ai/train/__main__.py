"""``python -m dicom_ai.train``: train or evaluate the lung model.

Examples
--------
Reproduce the shipped weights (about 10-15 min on 2 CPU cores)::

    python -m dicom_ai.train train models/lung-unet

Held-out run and its evaluation::

    python -m dicom_ai.train train /tmp/lung-holdout --holdout crlm
    python -m dicom_ai.train evaluate /tmp/lung-holdout ../shared/data/ct_abdomen_CRLM-CT-1006/image
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dicom_ai.train.data import LUNG_SERIES, default_data_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicom_ai.train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train the lung U-Net and write a model package")
    tr.add_argument("output_dir", type=Path, help="model package folder to write (manifest.json, model.pt)")
    tr.add_argument("--data-root", type=Path, default=default_data_root(), help="real data folder (default: %(default)s)")
    tr.add_argument(
        "--holdout", action="append", choices=sorted(LUNG_SERIES), default=[], help="leave a series out (repeatable)"
    )
    tr.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    tr.add_argument("--iterations", type=int, default=700, help="optimiser steps (default: %(default)s)")
    tr.add_argument("--max-minutes", type=float, default=25.0, help="wall-clock safety stop (default: %(default)s)")

    ev = sub.add_parser("evaluate", help="Dice per label of a model package on one series")
    ev.add_argument("package_dir", type=Path)
    ev.add_argument("series", type=Path, help="DICOM series folder or NIfTI CT")
    ev.add_argument(
        "--reference",
        default="classical",
        help="'classical' (HU extraction), a TotalSegmentator .nii.gz label map, or a .npy label array",
    )
    ev.add_argument("--device", default=None)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "train":
        from dicom_ai.train.loop import train_lung_model

        result = train_lung_model(
            args.output_dir,
            data_root=args.data_root,
            holdout=args.holdout,
            seed=args.seed,
            max_minutes=args.max_minutes,
            iterations=args.iterations,
        )
    else:
        from dicom_ai.train.evaluate import evaluate_model

        ref = args.reference if args.reference == "classical" else Path(args.reference)
        result = evaluate_model(args.package_dir, args.series, ref, device=args.device)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
