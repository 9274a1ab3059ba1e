"""Writing a trained network as a model package (``manifest.json``, weights, training log).

A package is what :mod:`dicom_ai.models.registry` adds and :mod:`dicom_ai.infer.runtime`
loads; see :mod:`dicom_ai.package.manifest`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from dicom_ai.package.manifest import ModelManifest, sha256_of, write_manifest


def write_package(output_dir: Path, manifest: ModelManifest, net: torch.nn.Module, log: dict,
                  model_card: str | None = None) -> Path:
    """Save ``net``'s float32 state dict as ``manifest.weights``, fill in ``manifest.sha256``,
    write ``manifest.json``, ``training_log.json`` (``log`` plus the torch version and
    machine) and, when given, ``MODEL_CARD.md`` (an existing card is kept otherwise).

    Returns
    -------
    Path
        ``output_dir`` (created).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    weights = output_dir / manifest.weights
    torch.save({k: v.detach().cpu().float().contiguous() for k, v in net.state_dict().items()}, weights)
    manifest.sha256 = sha256_of(weights)
    write_manifest(output_dir, manifest)
    log = {**log, "weights_bytes": weights.stat().st_size, "sha256": manifest.sha256,
           "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    (output_dir / "training_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    if model_card is not None:
        (output_dir / manifest.model_card).write_text(model_card, encoding="utf-8")
    return output_dir
