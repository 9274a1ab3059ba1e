"""Slices read before the series is loaded (:func:`read_slice`, as the worker's incoming reader
reads them while a series arrives) give, through ``load_series(known=...)``, exactly the volume
that reading every file gives, on a JPEG-LS and an uncompressed real CT; what is not an image
slice is not given; a known slice of another size than the series is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_ai.infer.volume import VolumeError, load_series, read_slice

from .conftest import DATA, REPO, files

SERIES = {
    "demo-jpegls-0314": REPO / "demo" / "ct_chest_LIDC-IDRI-0314" / "image",
    "lidc-0314-implicit": DATA / "ct_chest_LIDC-IDRI-0314" / "image",
}


def _same(a, b) -> None:
    assert np.array_equal(a.array, b.array)
    assert a.spacing == b.spacing
    assert np.array_equal(a.origin, b.origin) and np.array_equal(a.direction, b.direction)
    assert [d.SOPInstanceUID for d in a.datasets] == [d.SOPInstanceUID for d in b.datasets]
    assert a.paths == b.paths
    assert all("PixelData" not in d for d in b.datasets)  # headers only, as read_headers keeps them


@pytest.mark.parametrize("name", list(SERIES))
def test_known_slices_give_the_volume_the_files_give(name: str) -> None:
    folder = SERIES[name]
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    paths = files(folder)  # the whole series: the forked decoders share the files not known
    read = load_series(paths)
    for known in ({p: read_slice(p) for p in paths[::2]},   # some read as they arrived
                  {p: read_slice(p) for p in paths}):        # all
        assert all(v is not None for v in known.values())
        _same(read, load_series(paths, known=known))
    # the known pixels are those used, not the file's again
    header, pixels = known[paths[7]]
    marked = load_series(paths, known={paths[7]: (header, pixels + 1)})
    k = marked.paths.index(paths[7])
    assert np.array_equal(marked.array[k], read.array[k] + 1)
    assert np.array_equal(np.delete(marked.array, k, 0), np.delete(read.array, k, 0))


def test_what_is_not_an_image_slice_is_not_read(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    assert read_slice(junk) is None
    assert read_slice(tmp_path / "gone.dcm") is None


def test_a_known_slice_of_another_size_is_refused(lidc_subset: list[Path]) -> None:
    header, pixels = read_slice(lidc_subset[3])
    with pytest.raises(VolumeError, match=lidc_subset[3].name):
        load_series(lidc_subset, known={lidc_subset[3]: (header, pixels[:256])})
