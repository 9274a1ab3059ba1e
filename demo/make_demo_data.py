#!/usr/bin/env python3
"""Build and verify the bundled demo CT: LIDC-IDRI-0314, losslessly transcoded to JPEG-LS.

Reproduces ``demo/ct_chest_LIDC-IDRI-0314/image/`` from ``../shared/data`` (the repository's
sibling folder) and checks every file against its source:

* same SOP Class / SOP Instance / Series / Study UIDs (lossless: no new UIDs), same file meta
  SOP UIDs, transfer syntax JPEG-LS Lossless (1.2.840.10008.1.2.4.80);
* every other data element unchanged (group lengths, retired, are allowed to differ);
* pixel data decoded by pydicom with each available JPEG-LS plugin (pyjpegls, pylibjpeg) equal,
  value for value, to the source's native pixel data;
* ``dciodvfy`` (when installed) reports no error and no warning that the source does not have.

Usage::

    python demo/make_demo_data.py            # build (dcmcjpls if installed) and verify
    python demo/make_demo_data.py --verify   # verify the committed bundle only
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGLSLossless

HERE = Path(__file__).resolve().parent
NAME = "ct_chest_LIDC-IDRI-0314"
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "data" / NAME
DEFAULT_DEST = HERE / NAME
SIZE_LIMIT = 60_000_000  # bytes, for the whole bundle folder
UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                "FrameOfReferenceUID")


def encode(src: Path, dst: Path, encoder: str) -> None:
    """Write ``src`` to ``dst`` as JPEG-LS lossless, keeping the SOP Instance UID."""
    if encoder == "dcmcjpls":
        # +el lossless (default), +un never assign a new UID
        subprocess.run(["dcmcjpls", "+el", "+un", str(src), str(dst)], check=True,
                       capture_output=True)
    else:
        ds = pydicom.dcmread(src)
        ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
        ds.save_as(dst, enforce_file_format=True)


def native_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The source's native (uncompressed) stored values, straight from the bytes."""
    dtype = {(16, 0): "<u2", (16, 1): "<i2", (8, 0): "u1", (8, 1): "i1"}[
        (ds.BitsAllocated, ds.PixelRepresentation)]
    return np.frombuffer(ds.PixelData, dtype).reshape(ds.Rows, ds.Columns)


def decoder_plugins() -> list[str]:
    """pydicom JPEG-LS decoding plugins that are installed."""
    plugins = []
    for name, module in (("pyjpegls", "jpeg_ls"), ("pylibjpeg", "libjpeg")):
        try:
            __import__(module)
            plugins.append(name)
        except ImportError:
            pass
    return plugins


def dciodvfy(path: Path) -> tuple[set[str], set[str]]:
    """(errors, warnings) reported by dciodvfy for one file."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                         errors="replace", check=False)
    lines = [ln.strip() for ln in (out.stderr + "\n" + out.stdout).splitlines()]
    return ({ln for ln in lines if ln.startswith("Error - ")},
            {ln for ln in lines if ln.startswith("Warning - ")})


def verify_one(src: Path, dst: Path, plugins: list[str], run_dciodvfy: bool) -> list[str]:
    """Problems found comparing one transcoded file with its source (empty: all good)."""
    problems: list[str] = []
    a = pydicom.dcmread(src)
    b = pydicom.dcmread(dst)
    if b.file_meta.TransferSyntaxUID != JPEGLSLossless:
        problems.append(f"transfer syntax {b.file_meta.TransferSyntaxUID}")
    for kw in UID_KEYWORDS:
        if a.get(kw) != b.get(kw):
            problems.append(f"{kw} changed: {a.get(kw)} -> {b.get(kw)}")
    for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
        if a.file_meta.get(kw) != b.file_meta.get(kw):
            problems.append(f"file meta {kw} changed")
    tags_a = {e.tag for e in a if e.tag.element != 0 and e.tag != 0x7FE00010}
    tags_b = {e.tag for e in b if e.tag.element != 0 and e.tag != 0x7FE00010}
    if tags_a != tags_b:
        problems.append(f"elements differ: only source {tags_a - tags_b}, only copy {tags_b - tags_a}")
    for tag in tags_a & tags_b:
        if a[tag].value != b[tag].value:
            problems.append(f"{tag} {a[tag].keyword}: {a[tag].value!r} -> {b[tag].value!r}")
    original = native_pixels(a)
    for plugin in plugins:
        decoded = pixel_array(b, decoding_plugin=plugin)
        if decoded.dtype != original.dtype or not np.array_equal(decoded, original):
            problems.append(f"pixels differ when decoded with {plugin}")
    if run_dciodvfy:
        (err_a, warn_a), (err_b, warn_b) = dciodvfy(src), dciodvfy(dst)
        problems += [f"new dciodvfy {e}" for e in sorted(err_b - err_a)]
        problems += [f"new dciodvfy {w}" for w in sorted(warn_b - warn_a)]
    return [f"{dst.name}: {p}" for p in problems]


def folder_size(folder: Path) -> int:
    """Total bytes of all files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(source: Path, dest: Path, encoder: str, jobs: int) -> None:
    """(Re)create ``dest`` with LICENSE and the transcoded images (ATTRIBUTION.md is kept)."""
    images = sorted((source / "image").glob("*.dcm"))
    if not images:
        sys.exit(f"no source images in {source / 'image'}")
    out = dest / "image"
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staging = Path(tmp) / "image"
        staging.mkdir()
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda p: encode(p, staging / p.name, encoder), images))
        if out.exists():
            shutil.rmtree(out)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out))
    shutil.copyfile(source / "LICENSE", dest / "LICENSE")
    print(f"encoded {len(images)} files with {encoder}")


def verify(source: Path, dest: Path, jobs: int) -> bool:
    """Check the bundle against its source; print a summary; True when everything matches."""
    images = sorted((source / "image").glob("*.dcm"))
    copies = sorted((dest / "image").glob("*.dcm"))
    ok = True
    if [p.name for p in images] != [p.name for p in copies]:
        print(f"file lists differ: {len(images)} source, {len(copies)} bundled")
        ok = False
    plugins = decoder_plugins()
    if not plugins:
        sys.exit("no JPEG-LS decoder for pydicom (install pyjpegls or pylibjpeg-libjpeg)")
    run_dciodvfy = shutil.which("dciodvfy") is not None
    with ThreadPoolExecutor(jobs) as pool:
        results = pool.map(lambda p: verify_one(p, dest / "image" / p.name, plugins, run_dciodvfy),
                           [p for p in images if (dest / "image" / p.name).exists()])
        problems = [msg for r in results for msg in r]
    for msg in problems[:50]:
        print(msg)
    ok = ok and not problems
    src_size = folder_size(source / "image")
    size = folder_size(dest)
    print(f"{len(copies)} files; source images {src_size / 1e6:.1f} MB, bundle {size / 1e6:.1f} MB "
          f"({size / 2**20:.1f} MiB, ratio {src_size / max(size, 1):.2f}); pixels checked with "
          f"{', '.join(plugins)}; dciodvfy {'compared' if run_dciodvfy else 'not installed'}")
    if size > SIZE_LIMIT:
        print(f"bundle exceeds {SIZE_LIMIT / 1e6:.0f} MB")
        ok = False
    for required in ("LICENSE", "ATTRIBUTION.md"):
        if not (dest / required).is_file():
            print(f"missing {dest / required}")
            ok = False
    print("OK" if ok else "FAILED")
    return ok


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    ap.add_argument("--encoder", choices=("dcmcjpls", "pydicom"),
                    default="dcmcjpls" if shutil.which("dcmcjpls") else "pydicom")
    ap.add_argument("--verify", action="store_true", help="only verify the existing bundle")
    ap.add_argument("--jobs", type=int, default=4)
    args = ap.parse_args()
    if not args.verify:
        build(args.source, args.dest, args.encoder, args.jobs)
    sys.exit(0 if verify(args.source, args.dest, args.jobs) else 1)


if __name__ == "__main__":
    main()
