"""TFLite interpreters: backend choice, delegates with CPU fallback, tensor specs, invoke.

This is the only module that imports a TFLite backend. Backends, in order of preference:
``ai_edge_litert`` (runs uint8/int8 graphs through XNNPACK), ``tflite_runtime`` (needs
numpy<2), and ``tensorflow.lite`` when TensorFlow happens to be installed. The environment
variable ``EDGE_AGENT_BACKEND`` (one of those names) picks one explicitly.

Delegates (``edgetpu`` or an external delegate by library path) are checked with ``dlopen``
before the backend's ``load_delegate`` is called: a missing or wrong library then fails with a
clear reason instead of the backends' noisy ``Exception ignored in: Delegate.__del__``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ModelError, PluginUnavailableError
from edge_agent.runtime.base import ModelSignature, RuntimeInfo, TensorSpec
from edge_agent.runtime.flatbuffer_check import FlatbufferDamaged, check_model_bytes

logger = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"
BACKEND_ENV = "EDGE_AGENT_BACKEND"

# backend name -> (module with Interpreter and load_delegate, distribution for the version)
_BACKENDS: dict[str, tuple[str, str]] = {
    "ai_edge_litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite_runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow.lite", "tensorflow"),
}
# what a user may write in EDGE_AGENT_BACKEND besides the canonical names
_ALIASES = {"litert": "ai_edge_litert", "ai-edge-litert": "ai_edge_litert",
            "tflite-runtime": "tflite_runtime", "tf": "tensorflow", "tensorflow.lite": "tensorflow"}
# every TFLite external delegate exports this (the ABI load_delegate calls)
_DELEGATE_SYMBOL = "tflite_plugin_create_delegate"


@dataclass(frozen=True, slots=True)
class Backend:
    """An importable TFLite backend."""

    name: str
    version: str
    module: Any


_backend_lock = threading.Lock()
_backend_cache: dict[str, Backend] = {}
_logged_backends: set[str] = set()


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


def _requested_backend(name: str | None) -> str | None:
    """The backend asked for by argument, else by ``EDGE_AGENT_BACKEND``, else None (any)."""
    raw = name or os.environ.get(BACKEND_ENV, "").strip() or None
    if raw is None:
        return None
    canon = _ALIASES.get(raw.lower(), raw.lower())
    if canon not in _BACKENDS:
        source = "" if name else f" (from ${BACKEND_ENV})"
        raise PluginUnavailableError(f"unknown runtime backend {raw!r}{source}; expected one of "
                                     f"{', '.join(_BACKENDS)}")
    return canon


def get_backend(name: str | None = None) -> Backend:
    """The named backend, else ``$EDGE_AGENT_BACKEND``, else the first importable one.

    Raises:
        PluginUnavailableError: the requested backend (or, with none requested, every backend)
            cannot be imported; the message says what to install.
    """
    wanted = _requested_backend(name)
    names = [wanted] if wanted else list(_BACKENDS)
    errors: list[str] = []
    for n in names:
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
            version = str(getattr(module, "__version__", "unknown"))
        backend = Backend(n, version, module)
        with _backend_lock:
            _backend_cache[n] = backend
        return backend
    hint = {"tflite_runtime": "pip install 'edge-agent[tflite-runtime]' (it needs numpy<2)",
            "tensorflow": "pip install tensorflow"}.get(wanted or "", "pip install ai-edge-litert")
    what = f"the TFLite backend {wanted!r} is not installed" if wanted else \
        "no TFLite runtime is installed"
    raise PluginUnavailableError(f"{what} ({'; '.join(errors)}); install one with: {hint}")


def schema_module() -> Any | None:
    """The flatc-generated TFLite schema (``ai_edge_litert.schema_py_generated``), or None.

    Used to read a model file without an interpreter (``model inspect``); tflite-runtime and
    TensorFlow wheels do not ship it.
    """
    try:
        return importlib.import_module("ai_edge_litert.schema_py_generated")
    except ImportError:
        return None


def calibration_wrapper() -> Any:
    """LiteRT's post-training calibration wrapper class (``CalibrationWrapper``).

    Raises:
        PluginUnavailableError: ai-edge-litert (which ships it) is not installed.
    """
    try:
        module = importlib.import_module(
            "ai_edge_litert._pywrap_tensorflow_lite_calibration_wrapper")
    except ImportError as exc:
        raise PluginUnavailableError(
            f"model quantisation needs ai-edge-litert's calibration wrapper ({exc}); "
            "install it with: pip install ai-edge-litert") from None
    return module.CalibrationWrapper


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    zps = params.get("zero_points")
    if scales is not None and len(scales) > 0:
        scale = float(scales[0])
        zp = int(zps[0]) if zps is not None and len(zps) else 0
    else:
        quant = detail.get("quantization") or (0.0, 0)
        scale, zp = float(quant[0]), int(quant[1])
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
    if isinstance(delegate, str):
        # a bare library path or name is accepted too (bench --delegate /path/lib.so)
        return delegate, {}
    library = getattr(delegate, "library", None)
    if library is None and isinstance(delegate, Mapping):
        library = delegate.get("library")
    options = getattr(delegate, "options", None)
    if options is None and isinstance(delegate, Mapping):
        options = delegate.get("options", {})
    if not library:
        raise ModelError(f"delegate {delegate!r}: expected 'edgetpu' or {{library: PATH}}")
    return str(library), dict(options or {})


def _option_text(value: Any) -> str:
    """Delegate options are strings on the C side; booleans as the delegates spell them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@contextlib.contextmanager
def _quiet_delegate_del() -> Iterator[None]:
    """Drop the harmless ``Exception ignored in: Delegate.__del__`` a failed load leaves.

    A ``Delegate`` whose constructor failed still runs ``__del__``, which then raises
    AttributeError; Python reports it through ``sys.unraisablehook``. Every other unraisable
    exception goes on to the previous hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        obj = getattr(unraisable, "object", None)
        if (isinstance(unraisable.exc_value, AttributeError)
                and "Delegate.__del__" in getattr(obj, "__qualname__", "")):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def check_delegate_library(library: str) -> str | None:
    """Why ``library`` cannot serve as a TFLite delegate, or None when it looks loadable.

    Uses ``dlopen`` (ctypes) and looks for the external-delegate entry point, so the backend's
    ``load_delegate`` is only called for a library that can work.
    """
    if "/" in library and not Path(library).exists():
        return f"{library}: no such file"
    try:
        lib = ctypes.CDLL(library)
    except OSError as exc:
        return str(exc).strip() or f"{library}: cannot be loaded"
    if not hasattr(lib, _DELEGATE_SYMBOL):
        return f"{library} is not a TFLite delegate (it has no {_DELEGATE_SYMBOL})"
    return None


def _load_delegate(backend: Backend, library: str, options: Mapping[str, Any]) -> Any:
    """The backend's delegate object for ``library``; OSError/ValueError with the reason."""
    problem = check_delegate_library(library)
    if problem is not None:
        raise OSError(problem)
    opts = {str(k): _option_text(v) for k, v in options.items()}
    with _quiet_delegate_del():
        try:
            loader = getattr(backend.module, "load_delegate", None)
            if loader is None:  # tensorflow.lite keeps it under experimental
                loader = backend.module.experimental.load_delegate
            return loader(library, opts)
        except (OSError, ValueError, RuntimeError, AttributeError) as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise OSError(" ".join(lines) or f"{library}: {type(exc).__name__}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].strip()


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

        Args:
            path: the .tflite file.
            threads: interpreter (XNNPACK) threads.
            delegate: None (CPU), ``"edgetpu"``, a library path, or an object or mapping with
                ``library`` and ``options`` (config's DelegateLibraryConfig).
            fallback_to_cpu: run on the CPU when the delegate cannot load (the reason goes to
                ``info.fallback_reason`` and the log) instead of raising.
            backend: backend name; default ``$EDGE_AGENT_BACKEND`` or the first importable.

        Raises:
            ModelError: the file is missing or not a loadable TFLite model, or the delegate
                cannot load and ``fallback_to_cpu`` is false.
            PluginUnavailableError: no (or not the requested) TFLite backend is installed.
        """
        self.path = Path(path)
        self._interp: Any = None
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        if self.path.stat().st_size == 0:
            raise ModelError(f"cannot load model {self.path}: the file is empty")
        try:
            check_model_bytes(self.path.read_bytes())
        except FlatbufferDamaged as exc:
            # LiteRT would refuse it too; tflite-runtime would crash the process (SIGSEGV)
            raise ModelError(f"cannot load model {self.path}: not a valid Flatbuffer "
                             f"(corrupt or truncated: {exc})") from None
        except OSError as exc:
            raise ModelError(f"cannot read model {self.path}: {exc.strerror or exc}") from None
        be = get_backend(backend)
        if be.name not in _logged_backends:
            _logged_backends.add(be.name)
            logger.info("TFLite backend: %s %s", be.name, be.version)
        spec = _delegate_spec(delegate)
        delegates: list[Any] = []
        used: str | None = None
        reason: str | None = None
        if spec is not None:
            library, options = spec
            try:
                delegates.append(_load_delegate(be, library, options))
                used = "edgetpu" if library == EDGETPU_LIBRARY else library
            except OSError as exc:
                reason = f"delegate {library} failed to load: {exc}"
                if not fallback_to_cpu:
                    raise ModelError(f"{reason} (install the delegate's library, or set "
                                     "fallback_to_cpu: true to run on the CPU)") from None
                logger.warning("%s; running %s on the CPU instead", reason, self.path.name)
        self._interp = self._make_interpreter(be, threads, delegates, fallback_to_cpu)
        if self._interp is None:  # the delegate refused the model; CPU fallback
            reason = f"delegate {used} cannot run {self.path.name}"
            logger.warning("%s; running it on the CPU instead", reason)
            used = None
            self._interp = self._make_interpreter(be, threads, [], False)
        self.signature = ModelSignature(
            inputs=tuple(_spec(d) for d in self._interp.get_input_details()),
            outputs=tuple(_spec(d) for d in self._interp.get_output_details()),
        )
        self.info = RuntimeInfo(be.name, be.version, used, threads, reason)
        self._in_idx = [t.index for t in self.signature.inputs]
        self._out_idx = [t.index for t in self.signature.outputs]
        self._in_meta = [(t.shape, np.dtype(t.dtype)) for t in self.signature.inputs]
        # the file as loaded (a staged update is its "<sha256>.part"); the bundle's line after
        # this names the model by its manifest name and version
        logger.info("loaded %s (%s %s, %s, %d threads)", self.path.name, be.name, be.version,
                    used or "cpu", threads)

    def _make_interpreter(self, be: Backend, threads: int, delegates: list[Any],
                          fallback_to_cpu: bool) -> Any:
        """A ready interpreter; None when a delegate refused the model and fallback is on."""
        try:
            interp = be.module.Interpreter(
                model_path=str(self.path),
                num_threads=threads,
                experimental_delegates=delegates or None,
            )
            interp.allocate_tensors()
        except (ValueError, RuntimeError, SystemError, OSError) as exc:
            if delegates and fallback_to_cpu:
                logger.debug("delegate refused %s: %s", self.path.name, _first_line(exc))
                return None
            reason = _first_line(exc)
            if "edgetpu-custom-op" in reason:
                reason += (" (the model was compiled for the Coral Edge TPU: set delegate: "
                           "edgetpu with libedgetpu installed, or use the model's CPU version)")
            raise ModelError(f"cannot load model {self.path}: {reason}") from None
        return interp

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model and return copies of its outputs.

        Args:
            inputs: one array per input tensor, with the input specs' shapes and dtypes.

        Raises:
            ModelError: the runtime was closed, or an input does not fit its tensor.
        """
        interp = self._interp
        if interp is None:
            raise ModelError(f"runtime for {self.path.name} is closed")
        if len(inputs) != len(self._in_idx):
            raise ModelError(f"{self.path.name} takes {len(self._in_idx)} inputs, "
                             f"got {len(inputs)}")
        for idx, (shape, dtype), arr in zip(self._in_idx, self._in_meta, inputs,
                                                strict=True):
            if arr.shape != shape or arr.dtype != dtype:
                raise ModelError(f"{self.path.name}: input {idx} wants {dtype.name}{list(shape)}, "
                                 f"got {arr.dtype.name}{list(arr.shape)}")
            interp.set_tensor(idx, arr)
        interp.invoke()
        return [interp.get_tensor(idx) for idx in self._out_idx]

    def ops(self) -> list[str]:
        """The operator name of every node the interpreter runs (``DELEGATE`` for delegated)."""
        if self._interp is None:
            return []
        getter = getattr(self._interp, "_get_ops_details", None)
        if getter is None:
            return []
        return [str(op.get("op_name", "?")) for op in getter()]

    def close(self) -> None:
        """Drop the interpreter (and with it the delegate)."""
        self._interp = None


def load_runtime(path: str | Path, *, threads: int = 2, delegate: Any = None,
                 fallback_to_cpu: bool = True, backend: str | None = None) -> TfliteRuntime:
    """Load a model with the preferred backend; see :class:`TfliteRuntime`."""
    return TfliteRuntime(path, threads=threads, delegate=delegate,
                         fallback_to_cpu=fallback_to_cpu, backend=backend)
