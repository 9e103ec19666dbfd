"""TFLite interpreters: backend choice, delegates with CPU fallback, tensor specs, invoke.

This is the only module that imports a TFLite backend. Backends, in order of preference:
``ai_edge_litert`` (runs uint8/int8 graphs through XNNPACK), ``tflite_runtime`` (needs
numpy<2), and ``tensorflow.lite`` when TensorFlow happens to be installed.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ModelError, PluginUnavailableError
from edge_agent.runtime.base import ModelSignature, RuntimeInfo, TensorSpec

logger = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"

# backend name -> (module with Interpreter and load_delegate, distribution for the version)
_BACKENDS: dict[str, tuple[str, str]] = {
    "ai_edge_litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite_runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow.lite", "tensorflow"),
}


@dataclass(frozen=True, slots=True)
class Backend:
    """An importable TFLite backend."""

    name: str
    version: str
    module: Any


_backend_lock = threading.Lock()
_backend_cache: dict[str, Backend] = {}


def available_backends() -> list[tuple[str, str | None, str | None]]:
    """Every known backend as ``(name, version or None, error or None)``, for doctor."""
    out: list[tuple[str, str | None, str | None]] = []
    for name in _BACKENDS:
        try:
            backend = get_backend(name)
            out.append((name, backend.version, None))
        except PluginUnavailableError as exc:
            out.append((name, None, str(exc)))
    return out


def get_backend(name: str | None = None) -> Backend:
    """The named backend, or the first importable one (ai_edge_litert preferred)."""
    names = [name] if name else list(_BACKENDS)
    errors: list[str] = []
    for n in names:
        if n not in _BACKENDS:
            raise PluginUnavailableError(f"unknown runtime backend {n!r} (expected one of "
                                         f"{', '.join(_BACKENDS)})")
        with _backend_lock:
            if n in _backend_cache:
                return _backend_cache[n]
        module_name, dist = _BACKENDS[n]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{n}: {exc}")
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = getattr(module, "__version__", "unknown")
        backend = Backend(n, version, module)
        with _backend_lock:
            _backend_cache[n] = backend
        return backend
    raise PluginUnavailableError(
        "no TFLite runtime is installed (" + "; ".join(errors) + "); install one with: "
        "pip install ai-edge-litert   (or: pip install 'edge-agent[tflite-runtime]', numpy<2)"
    )


def _spec(detail: dict[str, Any]) -> TensorSpec:
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    zps = params.get("zero_points")
    if scales is not None and len(scales) > 0:
        scale, zp = float(scales[0]), int(zps[0]) if zps is not None and len(zps) else 0
    else:
        scale, zp = (float(detail["quantization"][0]), int(detail["quantization"][1]))
    return TensorSpec(
        name=str(detail.get("name", "")),
        index=int(detail["index"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        scale=scale,
        zero_point=zp,
    )


def _delegate_spec(delegate: Any) -> tuple[str, dict[str, Any]] | None:
    """Normalise the config's delegate (None, "edgetpu", or an object with library/options)."""
    if delegate is None:
        return None
    if delegate == "edgetpu":
        return EDGETPU_LIBRARY, {}
    library = getattr(delegate, "library", None)
    if library is None and isinstance(delegate, dict):
        library = delegate.get("library")
    options = getattr(delegate, "options", None)
    if options is None and isinstance(delegate, dict):
        options = delegate.get("options", {})
    if not library:
        raise ModelError(f"delegate {delegate!r}: expected 'edgetpu' or {{library: PATH}}")
    return str(library), dict(options or {})


class TfliteRuntime:
    """A TFLite interpreter owned by one thread at a time: load, inspect, invoke.

    Attributes:
        signature: the model's input and output tensors.
        info: backend, version, delegate in use, threads, and why a delegate fell back.
        path: the model file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 2,
        delegate: Any = None,
        fallback_to_cpu: bool = True,
        backend: str | None = None,
    ) -> None:
        """Load ``path``.

        Raises:
            ModelError: the file is missing or not a loadable TFLite model, or the delegate
                cannot load and ``fallback_to_cpu`` is false.
            PluginUnavailableError: no TFLite backend is installed.
        """
        self.path = Path(path)
        be = get_backend(backend)
        spec = _delegate_spec(delegate)
        delegates: list[Any] = []
        used: str | None = None
        reason: str | None = None
        if spec is not None:
            library, options = spec
            try:
                delegates.append(be.module.load_delegate(library, {k: str(v) for k, v in
                                                                    options.items()}))
                used = library
            except (OSError, ValueError, RuntimeError) as exc:
                reason = f"delegate {library} failed to load: {str(exc).strip()}"
                if not fallback_to_cpu:
                    raise ModelError(f"{reason} (set fallback_to_cpu: true to run on the CPU, "
                                     "or install the delegate's library)") from None
                logger.warning("%s; running %s on the CPU instead", reason, self.path.name)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        try:
            self._interp = be.module.Interpreter(
                model_path=str(self.path),
                num_threads=threads,
                experimental_delegates=delegates or None,
            )
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError, SystemError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load model {self.path}: {first}") from None
        self.signature = ModelSignature(
            inputs=tuple(_spec(d) for d in self._interp.get_input_details()),
            outputs=tuple(_spec(d) for d in self._interp.get_output_details()),
        )
        self.info = RuntimeInfo(be.name, be.version, used, threads, reason)
        self._in_idx = [t.index for t in self.signature.inputs]
        self._out_idx = [t.index for t in self.signature.outputs]

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model; ``inputs`` must match the input specs' shapes and dtypes."""
        interp = self._interp
        for idx, arr in zip(self._in_idx, inputs):
            interp.set_tensor(idx, arr)
        interp.invoke()
        return [interp.get_tensor(idx) for idx in self._out_idx]

    def close(self) -> None:
        """Drop the interpreter (and with it the delegate)."""
        self._interp = None


def load_runtime(path: str | Path, *, threads: int = 2, delegate: Any = None,
                 fallback_to_cpu: bool = True) -> TfliteRuntime:
    """Load a model with the preferred backend; see :class:`TfliteRuntime`."""
    return TfliteRuntime(path, threads=threads, delegate=delegate, fallback_to_cpu=fallback_to_cpu)
