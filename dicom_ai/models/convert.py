"""Convert a model package to another runtime: TorchScript or ONNX.

A package of runtime ``"monai"`` (network definition + state dict) or ``"torchscript"`` is
traced on one input of its patch size and written as a new package with the same manifest
except ``runtime``, ``weights``, ``sha256`` (and no ``network``). The model card and licence
files are copied. ONNX export uses ``torch.onnx.export`` (the ``torch.export``-based exporter;
needs the ``onnx`` and ``onnxscript`` packages, extra ``dicom-ai[export]``; a TorchScript package
goes through the older TorchScript-based exporter, which can read it) with a dynamic batch
dimension, opset 18.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from dicom_ai.infer.runtime import load_model
from dicom_ai.package.manifest import sha256_of, write_manifest

WEIGHTS = {"torchscript": "model.ts", "onnx": "model.onnx"}


def example_input(manifest) -> torch.Tensor:
    """A random input of one patch: (1, 1, *patch_size) for volumes, (1, 1, rows, columns)
    for ``input = "slices"`` classifiers."""
    size = tuple(manifest.patch_size)
    if manifest.task == "classification" and manifest.input == "slices":
        size = size[1:]
    return torch.rand((1, 1, *size))


def convert_package(src: Path, dest: Path, runtime: str, *, version: str | None = None) -> Path:
    """Write ``src``'s model as a package of ``runtime`` into ``dest`` (created; must not exist).

    Parameters
    ----------
    runtime:
        ``"torchscript"`` or ``"onnx"``.
    version:
        Version of the new package (default: the source's).

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    ValueError
        If ``runtime`` is not one of those, the source is ONNX, or ``dest`` exists.
    dicom_ai.infer.runtime.ModelPackageError
        If the source package cannot be loaded.
    """
    if runtime not in WEIGHTS:
        raise ValueError(f"runtime {runtime!r}: expected one of {sorted(WEIGHTS)}")
    src, dest = Path(src), Path(dest)
    if dest.exists():
        raise ValueError(f"{dest} exists; give a new folder")
    model = load_model(src, device="cpu")
    if model.network is None:
        raise ValueError(f"{src} is an ONNX package; it cannot be converted")
    manifest = model.manifest
    x = example_input(manifest)
    dest.mkdir(parents=True)
    weights = dest / WEIGHTS[runtime]
    try:
        with torch.no_grad():
            if runtime == "torchscript":
                traced = torch.jit.trace(model.network, x, check_trace=False)
                traced.save(str(weights))
            elif isinstance(model.network, torch.jit.ScriptModule):
                # torch.export cannot read TorchScript; the TorchScript-based exporter can
                torch.onnx.export(model.network, (x,), str(weights), input_names=["image"], output_names=["logits"],
                                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                                  opset_version=18)
            else:
                batch = torch.export.Dim("batch", min=1, max=1024)
                torch.onnx.export(model.network, (x,), str(weights), input_names=["image"], output_names=["logits"],
                                  dynamic_shapes=({0: batch},), dynamo=True, opset_version=18,
                                  external_data=False, verbose=False)
        for name in (manifest.model_card, "DATA_LICENSES.md", "LICENSE"):
            if name and (src / name).is_file():
                shutil.copy2(src / name, dest / name)
        # the exported graph runs in the float32 it was exported in: a bfloat16 validation of the
        # source network (autocast) says nothing about it
        new = manifest.model_copy(update={
            "runtime": runtime, "weights": weights.name, "sha256": sha256_of(weights), "network": None,
            "version": version or manifest.version, "autocast": None,
        })
        write_manifest(dest, type(manifest).model_validate(new.model_dump()))
    except Exception:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest

