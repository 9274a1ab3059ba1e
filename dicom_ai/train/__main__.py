"""``python -m dicom_ai.train``: the built-in recipes (lung model, body-region classifier).

Examples
--------
Reproduce the shipped lung model 2.0.0 (about 7 min on 2 CPU cores), its leave-one-patient-out
cross-validation (6 folds, about 40 min), the 3D design's folds, and the label overlays::

    python -m dicom_ai.train train models/lung-unet-2
    python -m dicom_ai.train crossvalidate /tmp/lung-cv --design 2d
    python -m dicom_ai.train crossvalidate /tmp/lung-cv --design 3d --patient LIDC-IDRI-0001
    python -m dicom_ai.train montage /tmp/lung-labels

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

from dicom_ai.train.data import default_data_root
from dicom_ai.train.lung import DESIGNS, LUNG_CASES, crossvalidate, label_montage, train_lung
from dicom_ai.train.region import (
    REGION_SERIES,
    classify_path,
    crossvalidate_region,
    evaluate_region_package,
    train_region_model,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicom_ai.train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train the lung model on every CC BY chest CT and write its package")
    tr.add_argument("output_dir", type=Path, help="model package folder to write (manifest.json, model.pt)")
    tr.add_argument("--data-root", type=Path, default=default_data_root(), help="real data folder (default: %(default)s)")
    tr.add_argument("--design", choices=sorted(DESIGNS), default="2d")
    tr.add_argument("--version", default="2.0.0")
    tr.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    tr.add_argument("--iterations", type=int, default=None, help="optimiser steps (default: the design's)")
    tr.add_argument("--max-minutes", type=float, default=60.0, help="wall-clock safety stop (default: %(default)s)")

    cv = sub.add_parser("crossvalidate", help="leave-one-patient-out cross-validation of a lung design")
    cv.add_argument("output_dir", type=Path, help="folder for one JSON per fold and the summary")
    cv.add_argument("--data-root", type=Path, default=default_data_root())
    cv.add_argument("--design", choices=sorted(DESIGNS), default="2d")
    cv.add_argument("--patient", action="append", default=[], help="hold out only these patients (repeatable)")
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--iterations", type=int, default=None)

    mo = sub.add_parser("montage", help="overlay montages of the lung training labels, one PNG per series")
    mo.add_argument("output_dir", type=Path)
    mo.add_argument("--data-root", type=Path, default=default_data_root())
    mo.add_argument("--case", action="append", choices=sorted(LUNG_CASES), default=[])

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
        result = train_lung(args.output_dir, args.design, args.data_root, version=args.version, seed=args.seed,
                            iterations=args.iterations, max_minutes=args.max_minutes)
    elif args.command == "crossvalidate":
        result = crossvalidate(args.output_dir, args.design, args.data_root, patients=args.patient or None,
                               seed=args.seed, iterations=args.iterations)
    elif args.command == "montage":
        result = {k: str(label_montage(k, args.data_root, args.output_dir)) for k in (args.case or LUNG_CASES)}
    elif args.command == "train-region":
        kwargs = dict(seed=args.seed, iterations=args.iterations, max_minutes=args.max_minutes)
        cv_result = crossvalidate_region(args.cv_dir, args.data_root, **kwargs) if args.cv_dir else None
        result = train_region_model(args.output_dir, data_root=args.data_root, holdout=args.holdout,
                                    crossvalidation=cv_result, **kwargs)
    elif args.command == "evaluate-region":
        result = evaluate_region_package(args.package_dir, args.data_root, args.series, external=not args.no_external)
        if args.path:
            result["paths"] = {str(p): classify_path(args.package_dir, p) for p in args.path}
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
