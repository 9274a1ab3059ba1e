"""The interface of a model runtime, and the CPU thread settings every runtime shares.

A runtime is a class per manifest ``runtime`` name (:attr:`Runtime.name`): :meth:`Runtime.accepts`
says whether it can run a package, :meth:`Runtime.load` loads the package's weights onto a device
and returns an instance, and :meth:`Runtime.predict` runs the network. Whatever the runtime,
:meth:`~Runtime.predict` takes a float32 tensor (batch, channels, spatial...) on the model's
device, spatial axes in the manifest's ``axcodes`` order, and returns the network's raw output
(logits) there: (batch, classes, spatial...) for segmentation, (batch, classes) for
classification.

A package whose manifest declares ``autocast`` (``"bfloat16"``) may run its forward pass under
``torch.autocast`` in that dtype where the device computes it natively
(:func:`native_autocast`; :meth:`Runtime.use_autocast`); the output is float32 either way.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from dicom_ai.package.manifest import ModelManifest

_threads: int | None = None


def configure_threads(threads: int | None = None) -> int:
    """Set, once at process start-up, how many CPU threads one model call uses.

    torch gets them now (``torch.set_num_threads``); onnxruntime sessions opened later in this
    process get as many (:func:`cpu_threads`).

    Parameters
    ----------
    threads:
        Number of threads; default ``os.cpu_count()``.

    Returns
    -------
    int
        The number set.
    """
    global _threads
    _threads = threads or os.cpu_count() or 1
    torch.set_num_threads(_threads)
    return _threads


def cpu_threads() -> int:
    """CPU threads for a runtime's session: those of :func:`configure_threads`, else
    ``os.cpu_count()``."""
    return _threads or os.cpu_count() or 1


def native_autocast(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``device`` computes ``dtype`` natively, so that a forward pass under
    ``torch.autocast`` in it is faster than float32 rather than emulated: on CPU, oneDNN's
    bfloat16 kernels (AVX512-BF16 or AMX; ``torch.ops.mkldnn._is_mkldnn_bf16_supported``), on
    CUDA ``torch.cuda.is_bf16_supported``. False for any other device or dtype."""
    if dtype != torch.bfloat16:
        return False
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def module_bytes(module: torch.nn.Module) -> int:
    """Memory a torch module's parameters and buffers take, bytes."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class Runtime(ABC):
    """The network of a loaded package behind one call: ``runtime(x)`` is
    :meth:`predict`.

    Subclasses set :attr:`name` (the manifest's ``runtime``) and implement :meth:`load` and
    :meth:`predict`; :func:`dicom_ai.infer.runtimes.runtime_for` finds them by name.

    Attributes
    ----------
    module:
        The torch module (runtimes ``monai`` and ``torchscript``), else None.
    nbytes:
        Memory the weights take, bytes (parameters and buffers; the ONNX file's size for
        ``onnx``).
    max_batch:
        The most inputs one call takes (an ONNX graph exported with a fixed batch size), else
        None.
    weights_device:
        Where the weights are: ``"cuda"`` (GPU memory) or ``"cpu"`` (RAM).
    """

    name: ClassVar[str] = ""

    def __init__(self, nbytes: int, module: torch.nn.Module | None = None, max_batch: int | None = None,
                 weights_device: str = "cpu") -> None:
        self.nbytes = nbytes
        self.module = module
        self.max_batch = max_batch
        self.weights_device = weights_device
        #: dtype of ``torch.autocast`` around the forward pass (:meth:`use_autocast`); None: float32
        self.autocast: torch.dtype | None = None

    def use_autocast(self, dtype: torch.dtype) -> bool:
        """Run the forward pass under ``torch.autocast`` in ``dtype`` from now on, if this
        runtime can (a torch module; not ONNX); returns whether it will. The output stays
        float32."""
        return False

    @classmethod
    def accepts(cls, manifest: ModelManifest) -> bool:
        """Whether this runtime runs the package of ``manifest`` (its ``runtime`` is
        :attr:`name`)."""
        return manifest.runtime == cls.name

    @classmethod
    @abstractmethod
    def load(cls, package_dir: Path, manifest: ModelManifest, device: torch.device) -> Runtime:
        """Load the weights of a package (already checksum-verified) on ``device``.

        Raises
        ------
        ModelPackageError
            If the weights cannot be loaded by the runtime, or do not fit the network.
        """

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output for ``x`` (batch, channels, spatial...), float32 on the
        model's device; the output is on the same device."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)


class TorchRuntime(Runtime):
    """A runtime whose network is a torch module on the model's device: ``predict`` is the
    module's forward pass (batch, channels, spatial...) -> (batch, outputs, spatial...)."""

    module: torch.nn.Module  # always set (the base allows None for ONNX)

    def __init__(self, module: torch.nn.Module, nbytes: int, weights_device: str) -> None:
        super().__init__(nbytes, module, weights_device=weights_device)

    def use_autocast(self, dtype: torch.dtype) -> bool:
        self.autocast = dtype
        return True

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output for ``x`` (batch, channels, spatial...), float32 (computed under
        ``torch.autocast`` in :attr:`autocast` when that is set)."""
        if self.autocast is None:
            return self.module(x)
        with torch.autocast(x.device.type, dtype=self.autocast):
            return self.module(x).float()
