"""How long JAX has spent compiling in this process, from its own monitoring events.

A round's ``train_seconds`` and ``query_seconds`` include any XLA compilation they
trigger, and the first strategy of a process pays for programs the others reuse. The
loop therefore also records the compile seconds of each phase, read as differences of
:func:`compile_seconds` around it, so timings can be compared with compilation apart.

JAX's monitoring listeners are process-wide and cannot be removed; this module
registers one on import that adds up what a first call costs beyond running: tracing
to a jaxpr (``/jax/core/compile/jaxpr_trace_duration``), lowering to MLIR
(``.../jaxpr_to_mlir_module_duration``) and the XLA backend compilation
(``.../backend_compile_duration``, also reported, briefly, when a program comes from the
persistent cache), and counts the backend compilations. The totals only grow; nothing
else reads or writes them.
"""

from __future__ import annotations

import threading

import jax

__all__ = ["compile_seconds", "compilations", "EVENT", "FIRST_CALL_EVENTS"]

EVENT = "/jax/core/compile/backend_compile_duration"
FIRST_CALL_EVENTS = (EVENT, "/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")

_lock = threading.Lock()
_total = [0.0]
_count = [0]


def _on_duration(event: str, duration: float, **_: object) -> None:
    if event in FIRST_CALL_EVENTS:
        with _lock:
            _total[0] += float(duration)
            _count[0] += event == EVENT


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds() -> float:
    """Seconds spent tracing, lowering and compiling (XLA) in this process since jaxal was imported."""
    with _lock:
        return _total[0]


def compilations() -> int:
    """Number of XLA backend compilations in this process since jaxal was imported."""
    with _lock:
        return _count[0]
