"""How long JAX has spent compiling in this process, from its own monitoring events.

A round's ``train_seconds`` and ``query_seconds`` include any XLA compilation they
trigger, and the first strategy of a process pays for programs the others reuse. The
loop therefore also records the compile seconds of each phase, read as differences of
:func:`compile_seconds` around it, so timings can be compared with compilation apart.

JAX's monitoring listeners are process-wide and cannot be removed; this module
registers one on import that adds up ``/jax/core/compile/backend_compile_duration``
(the backend compilation, also reported, briefly, when a program comes from the
persistent cache). The total only grows; nothing else reads or writes it.
"""

from __future__ import annotations

import threading

import jax

__all__ = ["compile_seconds", "compilations", "EVENT"]

EVENT = "/jax/core/compile/backend_compile_duration"

_lock = threading.Lock()
_total = [0.0]
_count = [0]


def _on_duration(event: str, duration: float, **_: object) -> None:
    if event == EVENT:
        with _lock:
            _total[0] += float(duration)
            _count[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds() -> float:
    """Seconds of XLA backend compilation in this process since jaxal was imported."""
    with _lock:
        return _total[0]


def compilations() -> int:
    """Number of XLA backend compilations in this process since jaxal was imported."""
    with _lock:
        return _count[0]
