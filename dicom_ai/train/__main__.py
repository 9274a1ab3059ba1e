"""``python -m dicom_ai.train``: train or evaluate the lung model and the body-region classifier.

Examples
--------
Reproduce the shipped weights (about 10-15 min on 2 CPU cores)::

    python -m dicom_ai.train train models/lung-unet

Held-out run and its evaluation::

    python -m dicom_ai.train train /tmp/lung-holdout --holdout crlm
    python -m dicom_ai.train evaluate /tmp/lung-holdout ../shared/data/ct_abdomen_CRLM-CT-1006/image

Body-region classifier: the shipped package with its two-fold cross-validation (about 1.5 min on
2 CPU cores), a single held-out run, and scoring a package::

    python -m dicom_ai.train train-region models/body-region --cv-dir /tmp/region-cv
    python -m dicom_ai.train train-region /tmp/region-a --holdout crlm --holdout ts-dicom --holdout ge-head-b
    python -m dicom_ai.train evaluate-region models/body-region --series lidc --path ../shared/data/ct_chest_LIDC-IDRI-0314/image
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

    from dicom_ai.train.region import REGION_SERIES

    rt = sub.add_parser("train-region", help="train the body-region classifier and write a model package")
    rt.add_argument("output_dir", type=Path, help="model package folder to write (manifest.json, model.ts)")
    rt.add_argument("--data-root", type=Path, default=default_data_root(), help="real data folder (default: %(default)s)")
    rt.add_argument("--holdout", action="append", choices=sorted(REGION_SERIES), default=[],
                    help="leave a series out and score it (repeatable)")
    rt.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    rt.add_argument("--iterations", type=int, default=1000, help="optimiser steps (default: %(default)s)")
    rt.add_argument("--max-minutes", type=float, default=5.0, help="wall-clock safety stop per training (default: %(default)s)")
    rt.add_argument("--cv-dir", type=Path, default=None,
                    help="first run the two-fold cross-validation by series into this folder and keep its scores "
                         "in the package's training_log.json")

    re_ = sub.add_parser("evaluate-region", help="score a body-region package on known series, external images, or a path")
    re_.add_argument("package_dir", type=Path)
    re_.add_argument("--data-root", type=Path, default=default_data_root())
    re_.add_argument("--series", action="append", choices=sorted(REGION_SERIES), default=[],
                     help="score per slice and per series against the derived labels (repeatable)")
    re_.add_argument("--path", action="append", type=Path, default=[],
                     help="classify a DICOM series folder, a DICOM file or a NIfTI CT (repeatable)")
    re_.add_argument("--no-external", action="store_true", help="skip the external single images")

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
    elif args.command == "train-region":
        from dicom_ai.train.region import crossvalidate_region, train_region_model

        kwargs = dict(seed=args.seed, iterations=args.iterations, max_minutes=args.max_minutes)
        cv = crossvalidate_region(args.cv_dir, args.data_root, **kwargs) if args.cv_dir else None
        result = train_region_model(args.output_dir, data_root=args.data_root, holdout=args.holdout,
                                    crossvalidation=cv, **kwargs)
    elif args.command == "evaluate-region":
        from dicom_ai.train.region import classify_path, evaluate_region_package

        result = evaluate_region_package(args.package_dir, args.data_root, args.series, external=not args.no_external)
        if args.path:
            result["paths"] = {str(p): classify_path(args.package_dir, p) for p in args.path}
    else:
        from dicom_ai.train.evaluate import evaluate_model

        ref = args.reference if args.reference == "classical" else Path(args.reference)
        result = evaluate_model(args.package_dir, args.series, ref, device=args.device)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
