"""Model packages: what a package holds, below inference and the registry.

- :mod:`dicom_ai.package.manifest`: the manifest (``manifest.json``) of a package folder, its
  validation, reading and writing, and the weights checksum.
- :mod:`dicom_ai.package.network`: the MONAI network a ``"monai"`` package names, built from its
  definition (imports torch).

The inference runtime (:mod:`dicom_ai.infer`) loads packages through these; the registry
(:mod:`dicom_ai.models`) sits above inference. This ``__init__`` imports nothing, so reading a
manifest does not load torch.
"""
