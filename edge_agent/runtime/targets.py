"""Execution targets: one model on an ordered list of targets, with failover and re-probe.

A pipeline's model runs on the first of its targets (``edgetpu``, a delegate library, ``cpu``)
that loads and passes a warm-up run. :class:`TargetRuntime` is a runtime like
:class:`~edge_agent.runtime.interpreter.TfliteRuntime` to the pipeline, and inside it:

* A delegate target's interpreter lives on its own worker thread, and every invoke on it has a
  deadline (``invoke_timeout_s``). When the invoke raises, outlives its deadline (a wedged
  accelerator), or returns NaN or infinity, the target is marked failed and the same inputs are
  run again on the next target that loads and passes warm-up, so the frame is not lost. A hung
  worker is abandoned (it exits once its call ever returns); the next target gets a fresh
  interpreter. The CPU target runs on the calling thread, with no hand-over cost.
* Every failed target better than the one serving is re-probed with back-off (``reprobe_s``,
  doubling to ``reprobe_max_s``): a fresh interpreter is loaded and warmed up on a new worker,
  in the background, optionally after a recovery hook (a USB reset). The caller's thread only
  looks at the probe between frames; when it passed, the better target takes over from the next
  frame on.
* Every change is logged and handed to ``on_change`` (the pipeline turns it into status, stats,
  metrics and a ``target_changed`` event).

All targets must have the same input and output tensors (shape, type, quantisation): the
pipeline's preprocessing and decoder are built once for the model, whatever runs it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import ModelConfig
from edge_agent.errors import EdgeAgentError, ModelError, PluginUnavailableError
from edge_agent.runtime.base import ModelSignature, RuntimeInfo, TensorSpec
from edge_agent.runtime.interpreter import TfliteRuntime
from edge_agent.runtime.usb_recovery import UsbReset
from edge_agent.types import TargetChange

logger = logging.getLogger(__name__)

TICK_S = 0.5  # how often a caller waiting on a worker is told it is still alive

# a target's states, as status and doctor show them
ACTIVE, STANDBY, FAILED, PROBING, UNAVAILABLE = "active", "standby", "failed", "probing", \
    "unavailable"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One place a model can run.

    Attributes:
        name: shown in status, events and metrics (``cpu``, ``edgetpu``, ...).
        library: ``edgetpu``, a delegate library path or name; None for the CPU.
        options: the delegate's options (strings on the C side).
        path: the model file for this target; None when there is none (the target stays
            unavailable, e.g. an update that brought no file for it).
        recover: run on the probe's worker before a failed target is loaded again (a USB
            reset); returns a line saying what it did, or None when it did nothing.
        recover_s: how long ``recover`` may take (added to the probe's deadline).
    """

    name: str
    library: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    recover: Callable[[], str | None] | None = None
    recover_s: float = 0.0


def target_specs(model: ModelConfig, *, path: Path | None = None,
                 target_files: Mapping[str, Path] | None = None,
                 sysfs_root: Path = Path("/sys")) -> list[TargetSpec]:
    """The model's execution targets, each with the model file it runs.

    Args:
        model: the pipeline's model config.
        path: the model file of an update (default: the configured ``model.path``). A target
            with its own ``path`` in the config gets no file from an update unless
            ``target_files`` names one for it (it then stays unavailable: an old file compiled
            for the accelerator must not run beside a new model).
        target_files: per-target files of an update, by target name.
        sysfs_root: where USB recovery hooks write (tests use a fake tree).
    """
    specs: list[TargetSpec] = []
    update = path is not None and Path(path) != Path(model.path)
    for t in model.resolved_targets():
        file: Path | None
        if target_files is not None and t.label in target_files:
            file = target_files[t.label]
        elif update:
            file = None if t.path is not None else path
        else:
            file = t.path or model.path
        library = None if t.delegate == "cpu" else t.delegate
        recover, budget = None, 0.0
        if t.recovery.enabled:
            reset = UsbReset(t.recovery.device, t.recovery.method, t.recovery.settle_s,
                             sysfs_root=sysfs_root)
            recover, budget = reset, reset.budget_s
        specs.append(TargetSpec(t.label, library, dict(t.options), file, recover, budget))
    return specs


class _Hung(Exception):
    """A call on a worker outlived its deadline."""


class _Call:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def _work(calls: queue.SimpleQueue[_Call | None]) -> None:
    while True:
        call = calls.get()
        if call is None:
            return
        try:
            call.result = call.fn()
        except BaseException as exc:  # handed to the caller, who decides
            call.error = exc
        finally:
            call.fn = _done  # drop the inputs and the closure
            call.done.set()


def _done() -> None:
    return None


class _Worker:
    """One thread that owns one interpreter, so a call that hangs can be abandoned."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=_work, args=(self._calls,), name=name, daemon=True)
        self.thread.start()
        # a worker dropped without close() still ends its thread
        weakref.finalize(self, self._calls.put, None)

    def submit(self, fn: Callable[[], Any]) -> _Call:
        call = _Call(fn)
        self._calls.put(call)
        return call

    def run(self, fn: Callable[[], Any], timeout: float,
            tick: Callable[[], None] | None = None) -> Any:
        """``fn()`` on the worker; raises what it raised, or _Hung after ``timeout`` s.

        ``tick`` is called every half second while waiting (the caller's heartbeat: a bounded
        wait is progress, not a stall).
        """
        call = self.submit(fn)
        deadline = time.monotonic() + timeout
        while not call.done.wait(min(TICK_S, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise _Hung
            if tick is not None:
                tick()
        if call.error is not None:
            raise call.error
        return call.result

    def close(self, wait_s: float = 0.0) -> None:
        """End the thread once its current call (if any) returns."""
        self._calls.put(None)
        if wait_s > 0:
            self.thread.join(wait_s)


@dataclass(slots=True)
class _Loaded:
    runtime: TfliteRuntime
    worker: _Worker | None  # None: runs on the caller's thread (the CPU)


@dataclass(slots=True)
class _State:
    spec: TargetSpec
    state: str = STANDBY
    reason: str | None = None
    failures: int = 0  # failures since it last served or passed a probe
    next_probe: float = 0.0  # monotonic
    backoff: float = 0.0
    last_recovery: str | None = None


@dataclass(slots=True)
class _Probe:
    index: int
    call: _Call
    worker: _Worker
    deadline: float


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _finite(outputs: Sequence[np.ndarray]) -> bool:
    for out in outputs:
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            return False
    return True


def same_tensors(a: tuple[TensorSpec, ...], b: tuple[TensorSpec, ...]) -> bool:
    """Whether two tensor lists agree in shape, type and quantisation (names may differ)."""
    return len(a) == len(b) and all(
        (x.shape, x.dtype, x.scale, x.zero_point) == (y.shape, y.dtype, y.scale, y.zero_point)
        for x, y in zip(a, b, strict=True))


def synthetic_inputs(signature: ModelSignature) -> list[np.ndarray]:
    """A neutral input per tensor (the zero point, or 0.0) for a warm-up without a frame."""
    return [np.full(t.shape, t.zero_point if t.quantized else 0, dtype=np.dtype(t.dtype))
            for t in signature.inputs]


class TargetRuntime:
    """A model on an ordered list of targets, serving on the best one that works.

    Used by one thread at a time (the pipeline's inference thread), like any runtime; status
    methods may be called from other threads.

    Args:
        specs: the targets in order of preference (at least one).
        threads: interpreter threads.
        invoke_timeout_s: a delegate's invoke that takes longer counts as hung.
        load_timeout_s: the same for a delegate's load and warm-up.
        reprobe_s: first re-probe of a failed target; the back-off doubles up to
            ``reprobe_max_s``.
        backend: TFLite backend name (default: ``$EDGE_AGENT_BACKEND`` or the first).
        warmup: warm-up inputs for a signature (default :func:`synthetic_inputs`; after the
            first frame, a copy of a recent real input is used).

    Raises:
        ModelError: no target loads and passes warm-up (the message names each one's reason).
    """

    def __init__(self, specs: Sequence[TargetSpec], *, threads: int = 2,
                 invoke_timeout_s: float = 2.0, load_timeout_s: float = 30.0,
                 reprobe_s: float = 5.0, reprobe_max_s: float = 300.0,
                 backend: str | None = None,
                 warmup: Callable[[ModelSignature], list[np.ndarray]] | None = None) -> None:
        if not specs:
            raise ValueError("a TargetRuntime needs at least one target")
        self._states = [_State(s) for s in specs]
        self._threads = threads
        self.invoke_timeout_s = invoke_timeout_s
        self.load_timeout_s = load_timeout_s
        self.reprobe_s = reprobe_s
        self.reprobe_max_s = max(reprobe_max_s, reprobe_s)
        self._backend = backend
        self._warmup = warmup or synthetic_inputs
        self._lock = threading.Lock()
        self._active: int | None = None
        self._loaded: _Loaded | None = None
        self._probe: _Probe | None = None
        self._reference: ModelSignature | None = None
        self._recent: list[np.ndarray] | None = None
        self._recent_at = 0.0
        self._closed = False
        self.changes = 0  # target changes since load
        self.on_change: Callable[[TargetChange], None] | None = None
        # called every TICK_S while the caller waits on a delegate (invoke, or a failover's
        # load and warm-up): the pipeline refreshes its heartbeat, since the wait is bounded
        self.on_wait: Callable[[], None] | None = None
        for i in range(len(self._states)):
            loaded = self._load_now(i)
            if loaded is not None:
                self._activate(i, loaded, None)
                break
        if self._loaded is None:
            if len(self._states) == 1:  # one target: its own reason says it all
                raise ModelError(self._states[0].reason or "the model cannot be loaded")
            raise ModelError("no execution target can run the model: " + "; ".join(
                f"{s.spec.name}: {s.reason}" for s in self._states))
        assert self._reference is not None
        self.signature: ModelSignature = self._reference

    def built_as(self, specs: Sequence[TargetSpec], *, threads: int, invoke_timeout_s: float,
                 load_timeout_s: float, reprobe_s: float, reprobe_max_s: float) -> bool:
        """Whether this open runtime is what these arguments would build (the same targets with
        the same files, threads and timeouts), so a caller may use it instead of loading the
        model again."""
        def key(s: TargetSpec) -> tuple[Any, ...]:
            return s.name, s.library, dict(s.options), s.path
        return (not self._closed and self._loaded is not None and threads == self._threads
                and [key(s) for s in specs] == [key(st.spec) for st in self._states]
                and invoke_timeout_s == self.invoke_timeout_s
                and load_timeout_s == self.load_timeout_s and reprobe_s == self.reprobe_s
                and max(reprobe_max_s, reprobe_s) == self.reprobe_max_s)

    # ------------------------------------------------------------------ the runtime protocol

    @property
    def info(self) -> RuntimeInfo:
        """Backend, the delegate serving now, and why a better target is not serving."""
        loaded, active = self._loaded, self._active
        fallback = None
        for st in self._states[: active if active is not None else len(self._states)]:
            if st.reason:
                fallback = f"{st.spec.name}: {st.reason}"
                break
        if loaded is None:
            return RuntimeInfo("none", "", None, self._threads, fallback)
        base = loaded.runtime.info
        spec = self._states[active].spec if active is not None else None
        delegate = spec.name if spec is not None and spec.library is not None else None
        return RuntimeInfo(base.backend, base.backend_version, delegate, base.threads, fallback)

    @property
    def path(self) -> Path:
        """The model file serving now."""
        loaded = self._loaded
        if loaded is not None:
            return loaded.runtime.path
        return next(s.spec.path for s in self._states if s.spec.path is not None)

    @property
    def active(self) -> str | None:
        """The name of the target serving now."""
        i = self._active
        return None if i is None else self._states[i].spec.name

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model on the serving target, failing over to the next one if it fails.

        Raises:
            ModelError: the runtime is closed, the inputs do not fit, or no target is left.
        """
        if self._closed:
            raise ModelError("runtime is closed")
        self._between_frames()
        while True:
            loaded, index = self._loaded, self._active
            if loaded is None or index is None:
                self._load_any()
                continue
            try:
                outputs = self._invoke(loaded, inputs)
            except _Hung:
                reason, hung = f"invoke hung (no answer within {self.invoke_timeout_s:g}s)", True
            except ModelError:
                raise  # inputs that do not fit the model: no target would take them
            except Exception as exc:
                reason, hung = f"invoke failed: {_first_line(exc)}", False
            else:
                last = index == len(self._states) - 1
                if last or _finite(outputs):
                    self._remember(inputs)
                    return outputs
                reason, hung = "invoke gave non-finite outputs (NaN or infinity)", False
            self._fail_over(index, reason, hung)

    def ops(self) -> list[str]:
        """The serving interpreter's operator names (``DELEGATE`` for delegated nodes)."""
        loaded = self._loaded
        return loaded.runtime.ops() if loaded is not None else []

    def close(self) -> None:
        """Drop the interpreters and end the workers (a hung one ends when its call returns)."""
        self._closed = True
        loaded, self._loaded, self._active = self._loaded, None, None
        probe, self._probe = self._probe, None
        if loaded is not None:
            self._retire(loaded, hung=False)
        if probe is not None:
            probe.worker.close(wait_s=0.0)

    # ------------------------------------------------------------------ status

    def targets(self) -> list[dict[str, Any]]:
        """Each target's state for status and doctor, in order of preference."""
        now = time.monotonic()
        with self._lock:
            out = []
            for st in self._states:
                due = None
                if st.state == FAILED:
                    due = round(max(0.0, st.next_probe - now), 1)
                item: dict[str, Any] = {
                    "name": st.spec.name, "delegate": st.spec.library or "cpu",
                    "state": st.state, "reason": st.reason, "failures": st.failures,
                    "reprobe_in_s": due,
                    "model": st.spec.path.name if st.spec.path is not None else None,
                }
                if st.last_recovery:
                    item["recovery"] = st.last_recovery
                out.append(item)
            return out

    # ------------------------------------------------------------------ internals

    def _remember(self, inputs: list[np.ndarray]) -> None:
        """Keep a copy of a recent input (at most once a second) for warm-up runs."""
        now = time.monotonic()
        if self._recent is None or now - self._recent_at > 1.0:
            self._recent = [np.array(a, copy=True) for a in inputs]
            self._recent_at = now

    def _invoke(self, loaded: _Loaded, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if loaded.worker is None:
            return loaded.runtime.infer(inputs)
        runtime = loaded.runtime
        result: list[np.ndarray] = loaded.worker.run(lambda: runtime.infer(inputs),
                                                     self.invoke_timeout_s, self.on_wait)
        return result

    def cpu_variant(self, threads: int) -> TfliteRuntime | None:
        """Another CPU interpreter of the serving model, with ``threads`` threads, warmed up
        (for :meth:`exchange`; ``threads: auto``'s trial in the running pipeline). None when
        the serving target is not the CPU: a delegate's thread count is not ours to try.

        Raises:
            ModelError: the model does not load or warm up with that count.
        """
        serving = self._serving_cpu()
        if serving is None:
            return None
        return self._build(self._states[serving[0]].spec, recover=False, threads=threads)

    def exchange(self, runtime: TfliteRuntime) -> TfliteRuntime | None:
        """Serve with ``runtime`` (from :meth:`cpu_variant`) from the next invoke on; return
        the interpreter it replaces, now the caller's. None, and nothing changes, when the
        serving target is no longer the CPU (a failover since). Between frames, on the
        inference thread, like ``infer``."""
        serving = self._serving_cpu()
        if serving is None:
            return None
        self._loaded = _Loaded(runtime, None)
        self._threads = runtime.info.threads  # later (re)loads use the count serving now
        return serving[1].runtime

    def _serving_cpu(self) -> tuple[int, _Loaded] | None:
        """The serving target's index and interpreter when it is the CPU (open, no delegate)."""
        index, loaded = self._active, self._loaded
        if self._closed or index is None or loaded is None or loaded.worker is not None \
                or self._states[index].spec.library is not None:
            return None
        return index, loaded

    def _build(self, spec: TargetSpec, recover: bool, threads: int | None = None
               ) -> TfliteRuntime:
        """Load ``spec`` and warm it up (on the thread that will invoke it)."""
        if recover and spec.recover is not None:
            did = spec.recover()
            if did:
                with self._lock:
                    for st in self._states:
                        if st.spec is spec:
                            st.last_recovery = did
                logger.warning("target %s: %s", spec.name, did)
        assert spec.path is not None
        delegate: Any = None
        if spec.library is not None:
            delegate = spec.library if spec.library == "edgetpu" and not spec.options else \
                {"library": spec.library, "options": dict(spec.options)}
        runtime = TfliteRuntime(spec.path, threads=threads or self._threads, delegate=delegate,
                                fallback_to_cpu=False, backend=self._backend)
        # every load names its target and file (which file ran where is auditable in the log)
        logger.info("target %s: loaded %s", spec.name, spec.path.name)
        try:
            ref = self._reference
            sig = runtime.signature
            if ref is not None and not (same_tensors(ref.inputs, sig.inputs)
                                        and same_tensors(ref.outputs, sig.outputs)):
                raise ModelError(f"{spec.path.name} has other input/output tensors than the "
                                 "model on the other targets")
            inputs = self._recent if self._recent is not None else self._warmup(sig)
            outputs = runtime.infer(inputs)
            if not _finite(outputs):
                raise ModelError("warm-up gave non-finite outputs (NaN or infinity)")
        except Exception:
            runtime.close()
            raise
        return runtime

    def _load_now(self, index: int) -> _Loaded | None:
        """Load target ``index`` and warm it up now; None (state updated) when it fails."""
        st = self._states[index]
        spec = st.spec
        if spec.path is None:
            self._set(index, UNAVAILABLE, "no model file for this target")
            return None
        if spec.library is None:
            try:
                runtime = self._build(spec, recover=False)
            except PluginUnavailableError:
                raise  # no TFLite backend at all: no target can help
            except (EdgeAgentError, RuntimeError, ValueError, OSError) as exc:
                self._mark_failed(index, _first_line(exc))
                return None
            self._reference = self._reference or runtime.signature
            return _Loaded(runtime, None)
        worker = _Worker(f"target-{spec.name}")
        try:
            runtime = worker.run(lambda: self._build(spec, recover=False), self.load_timeout_s,
                                 self.on_wait)
        except _Hung:
            worker.close()
            self._mark_failed(index, f"load and warm-up hung (more than "
                                     f"{self.load_timeout_s:g}s)")
            return None
        except PluginUnavailableError:
            worker.close(wait_s=1.0)
            raise
        except Exception as exc:
            worker.close(wait_s=1.0)
            self._mark_failed(index, _first_line(exc))
            return None
        self._reference = self._reference or runtime.signature
        return _Loaded(runtime, worker)

    def _load_any(self) -> None:
        """Nothing serves (the only target failed): load the first target that works."""
        now = time.monotonic()
        for i, st in enumerate(self._states):
            if st.state == UNAVAILABLE or (st.state == FAILED and now < st.next_probe):
                continue
            loaded = self._load_now(i)
            if loaded is not None:
                self._activate(i, loaded, "re-loaded after it failed")
                return
        raise ModelError("no execution target can run the model now: " + "; ".join(
            f"{s.spec.name}: {s.reason}" for s in self._states))

    def _fail_over(self, index: int, reason: str, hung: bool) -> None:
        """Target ``index`` failed: retire it and activate the next one that works."""
        name = self._states[index].spec.name
        logger.warning("target %s failed: %s", name, reason)
        loaded, self._loaded, self._active = self._loaded, None, None
        if loaded is not None:
            self._retire(loaded, hung)
        self._mark_failed(index, reason)
        last = len(self._states) - 1
        now = time.monotonic()
        for j in range(index + 1, len(self._states)):
            st = self._states[j]
            if st.state == UNAVAILABLE or (st.state == FAILED and now < st.next_probe
                                           and j != last):
                continue
            nxt = self._load_now(j)
            if nxt is not None:
                self._activate(j, nxt, f"{name}: {reason}", previous=name)
                return
        raise ModelError(f"target {name} failed ({reason}) and no other target can run the "
                         "model")

    def _retire(self, loaded: _Loaded, hung: bool) -> None:
        if loaded.worker is None:
            loaded.runtime.close()
        elif hung:
            # the interpreter is stuck in invoke on the worker: leave both to the worker,
            # which ends once the call ever returns
            loaded.worker.close()
        else:
            runtime = loaded.runtime
            loaded.worker.submit(runtime.close)
            loaded.worker.close(wait_s=1.0)

    def _between_frames(self) -> None:
        """Adopt a probe that passed, give up on one past its deadline, or start one."""
        probe = self._probe
        now = time.monotonic()
        if probe is not None:
            if probe.call.done.is_set():
                self._probe = None
                self._probe_finished(probe)
            elif now > probe.deadline:
                self._probe = None
                probe.worker.close()
                self._mark_failed(probe.index, f"re-probe hung (more than "
                                               f"{self.load_timeout_s:g}s)")
            return
        active = self._active
        if active is None or active == 0:
            return
        for j in range(active):
            st = self._states[j]
            if st.state == FAILED and now >= st.next_probe:
                self._start_probe(j, now)
                return

    def _start_probe(self, index: int, now: float) -> None:
        st = self._states[index]
        spec = st.spec
        self._set(index, PROBING, st.reason)
        worker = _Worker(f"target-{spec.name}")
        call = worker.submit(lambda: self._build(spec, recover=True))
        self._probe = _Probe(index, call, worker, now + self.load_timeout_s + spec.recover_s)
        logger.info("target %s: re-probing (failure %d)", spec.name, st.failures)

    def _probe_finished(self, probe: _Probe) -> None:
        j = probe.index
        if probe.call.error is not None:
            probe.worker.close(wait_s=1.0)
            self._mark_failed(j, _first_line(probe.call.error))
            return
        loaded = _Loaded(probe.call.result, probe.worker)
        active = self._active
        if active is not None and j >= active:
            self._retire(loaded, hung=False)
            return
        previous = self.active
        old, self._loaded, self._active = self._loaded, None, None
        if old is not None:
            self._retire(old, hung=False)
        self._activate(j, loaded, "re-probe passed warm-up", previous=previous)

    def _activate(self, index: int, loaded: _Loaded, reason: str | None,
                  previous: str | None = None) -> None:
        with self._lock:
            self._active, self._loaded = index, loaded
            st = self._states[index]
            st.state, st.reason, st.failures, st.backoff = ACTIVE, None, 0, 0.0
            for later in self._states[index + 1:]:
                if later.state in {ACTIVE, PROBING}:
                    later.state = STANDBY
        name = st.spec.name
        if reason is None:
            logger.info("serving on target %s", name)
            return
        self.changes += 1
        logger.warning("now serving on target %s (was %s): %s", name, previous or "none",
                       reason)
        callback = self.on_change
        if callback is not None:
            callback(TargetChange(previous, name, reason, time.time()))

    def _set(self, index: int, state: str, reason: str | None) -> None:
        with self._lock:
            st = self._states[index]
            st.state, st.reason = state, reason

    def _mark_failed(self, index: int, reason: str) -> None:
        with self._lock:
            st = self._states[index]
            st.failures += 1
            st.backoff = self.reprobe_s if st.backoff == 0.0 else min(st.backoff * 2,
                                                                      self.reprobe_max_s)
            st.state, st.reason = FAILED, reason
            st.next_probe = time.monotonic() + st.backoff
        logger.info("target %s: %s (next probe in %.1fs)", st.spec.name, reason, st.backoff)
