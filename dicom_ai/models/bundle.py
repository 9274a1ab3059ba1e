"""Import a MONAI bundle (MONAI Model Zoo format) as a dicom-ai model package.

A MONAI bundle (specification: https://docs.monai.io/en/stable/mb_specification.html) is a
folder with ``configs/metadata.json`` (version, description, authors, ...,
``network_data_format``: what the network takes and returns), an inference config
``configs/inference.json`` (or ``.yaml``/``.yml``; MONAI config syntax,
https://docs.monai.io/en/stable/config_syntax.html) with ``preprocessing``, ``inferer`` and
``postprocessing`` sections, the weights (``models/model.ts``: TorchScript, or ``models/model.pt``:
a state dict of the config's ``network_def``, a ``monai.networks.nets`` class), ``LICENSE`` and
``docs/README.md``. :func:`import_bundle` writes the equivalent dicom-ai package
(:mod:`dicom_ai.package.manifest`): ``manifest.json``, ``model.ts``, ``MODEL_CARD.md`` and the
licence files, and says line by line what it mapped and what it could not map.

What is mapped (bundle -> manifest):

============================================================ ===============================
``metadata.json`` ``name`` (slugified) or the folder name     ``name`` (or the ``name`` argument)
``metadata.json`` ``version``                                 ``version``
``metadata.json`` ``description``                             ``description``
``network_data_format.inputs.<image>.modality``               ``modality`` (``MRI`` -> ``MR``)
``preprocessing`` ``Orientationd`` ``axcodes``                ``axcodes`` (none: ``"RAS"``)
``preprocessing`` ``Spacingd`` ``pixdim`` (mm, axcodes order) ``spacing``
``ScaleIntensityRanged`` ``a_min``/``a_max`` (b 0..1, clip)   ``normalization "window"``, ``window``
``NormalizeIntensityd``                                       ``normalization "zscore"``
``inferer`` ``SlidingWindowInferer`` ``roi_size`` (voxels)    ``patch_size`` (else the input's ``spatial_shape``)
``network_data_format.outputs.pred.channel_def``              ``labels`` (channel index = label value, 0 left out)
``models/model.ts``                                           ``weights`` ``model.ts``, ``runtime "torchscript"``, ``sha256``
``models/model.pt`` + ``network_def`` (a MONAI network)       ``weights`` ``model.pt``, ``runtime "monai"``, ``network``
``LICENSE`` (+ ``copyright``), ``docs/data_license.txt``      ``license``, copied files
metadata text fields + ``docs/README.md``                     ``MODEL_CARD.md``
============================================================ ===============================

Labels are coded with SNOMED CT (category ``SCT 123037004 "Anatomical Structure"``, or
``SCT 49755003 "Morphologically Abnormal Structure"`` for lesions) from the table of
:mod:`dicom_ai.report.codes` (:mod:`dicom_ai.models.bundle_labels`); a channel name not in the
table is coded ``SCT 85756007 "Tissue"`` and reported. ``body_region`` is guessed from the
labels' organs.

The config is read with MONAI's own :class:`monai.bundle.ConfigParser` (JSON and YAML, macros
and relative ids). References (``"@id"`` and ``"$@id"``) are followed; other ``"$"``
expressions are never evaluated (importing a bundle runs none of its code) and are reported
where they hold a value the import needs. Everything that has no equivalent in the node
(other transforms, inferer options, postprocessing) is listed in :attr:`BundleImport.unmapped`
together with what the node does instead.

:func:`import_bundle` runs one step per part of the bundle, each returning a small dataclass
and its :class:`~dicom_ai.models.bundle_config.Notes`: network data format, identity,
preprocessing, inferer and postprocessing (:mod:`dicom_ai.models.bundle_mapping`), labels
(:mod:`dicom_ai.models.bundle_labels`), licence, weights and package writing
(:mod:`dicom_ai.models.bundle_package`); the config is read by
:mod:`dicom_ai.models.bundle_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from dicom_ai.models.bundle_config import SPEC_URL, Notes, read_inference_config, read_metadata
from dicom_ai.models.bundle_labels import labels
from dicom_ai.models.bundle_mapping import identity, inferer, network_data_format, postprocessing, preprocessing
from dicom_ai.models.bundle_package import check_sources, licence, weights, write_package
from dicom_ai.package.manifest import ModelManifest, sha256_of

__all__ = ["SPEC_URL", "BundleImport", "import_bundle", "is_bundle"]


@dataclass
class BundleImport:
    """The result of :func:`import_bundle`.

    Attributes
    ----------
    manifest:
        The manifest written to ``out_dir/manifest.json``.
    mapped:
        What was mapped, one line each (``"Spacingd pixdim [1.5, 1.5, 2.0] -> spacing"``).
    unmapped:
        What could not be mapped and what the package does instead, one line each; read them
        before enabling the model.
    """

    manifest: ModelManifest
    mapped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)


def is_bundle(path: Path) -> bool:
    """True when ``path`` is a folder with ``configs/metadata.json`` (a MONAI bundle)."""
    path = Path(path)
    return path.is_dir() and (path / "configs" / "metadata.json").is_file()


def import_bundle(bundle_dir: Path, out_dir: Path, *, name: str | None = None) -> BundleImport:
    """Write the dicom-ai model package equivalent to a MONAI bundle.

    Parameters
    ----------
    bundle_dir:
        The bundle folder (``configs/metadata.json``, ``configs/inference.json|yaml``,
        ``models/model.ts``, ``LICENSE``, ``docs/``), see :data:`SPEC_URL`.
    out_dir:
        Folder for the package; created, or must be empty. Receives ``manifest.json``,
        ``model.ts`` (or ``model.pt``), ``MODEL_CARD.md``, ``LICENSE`` and ``DATA_LICENSE.txt`` when the bundle
        has them.
    name:
        Package name (default: metadata ``name`` slugified, else the folder name).

    Returns
    -------
    BundleImport
        The manifest and the mapped / unmapped lines (module docstring: the mapping).

    Raises
    ------
    ValueError
        If ``bundle_dir`` is not a bundle; its metadata has no ``network_data_format`` (or no
        inputs / outputs); its output is not a segmentation (``format`` of ``outputs.pred``),
        has fewer than two channels, or its input is not one channel of a 3D image; it has no
        ``models/model.ts`` (or that is not TorchScript) and no ``models/model.pt`` with a
        ``network_def`` naming a ``monai.networks.nets`` class with literal arguments; no input spacing (``Spacingd``
        ``pixdim``) or patch size can be found; a needed value is an unevaluated expression;
        the YAML config cannot be read (no PyYAML); the name or version does not fit the
        manifest; ``out_dir`` is not empty.
    """
    bundle_dir = Path(bundle_dir)
    out_dir = Path(out_dir)
    if not is_bundle(bundle_dir):
        raise ValueError(f"{bundle_dir} is not a MONAI bundle: no configs/metadata.json ({SPEC_URL})")
    notes = Notes()

    def step(result_and_notes):
        result, step_notes = result_and_notes
        notes.extend(step_notes)
        return result

    # the steps' order is the order of the notes, and of the checks (the error a bundle with
    # several problems gets); nothing is written before the last step
    meta = read_metadata(bundle_dir)
    fmt = step(network_data_format(bundle_dir, meta))
    check_sources(bundle_dir, out_dir)
    ident = step(identity(bundle_dir, meta, fmt, name))
    config = step(read_inference_config(bundle_dir))
    pre = step(preprocessing(bundle_dir, config, fmt.image_key))
    patch = step(inferer(bundle_dir, config, fmt))
    step(postprocessing(config))
    coded = step(labels(bundle_dir, fmt))
    lic = step(licence(bundle_dir, meta))
    weight = step(weights(bundle_dir, config))
    try:
        manifest = ModelManifest(
            name=ident.name, version=ident.version, task="segmentation", description=ident.description,
            modality=ident.modality, body_region=coded.body_region, axcodes=pre.axcodes, spacing=pre.spacing,
            normalization=pre.normalization, window=pre.window, patch_size=patch.patch_size, runtime=weight.runtime,
            network=weight.network, weights=weight.path.name, sha256=sha256_of(weight.path), labels=coded.labels,
            license=lic.text, model_card="MODEL_CARD.md",
        )
    except ValidationError as exc:
        raise ValueError(f"{bundle_dir}: the imported manifest is not valid: {exc}") from exc
    notes.extend(write_package(out_dir, bundle_dir, meta, manifest, weight, lic, notes))
    return BundleImport(manifest=manifest, mapped=notes.mapped, unmapped=notes.unmapped)
