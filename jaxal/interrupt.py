"""Ctrl-C at safe points.

A ``KeyboardInterrupt`` raised wherever Python happens to be when SIGINT arrives can
land inside JAX's dispatch or a compile callback; the process then crashed at exit
(segmentation faults were seen) or the exception was swallowed by library code and
the run went on. Inside :func:`deferred`, the first SIGINT only sets a flag: long
loops call :func:`check` between steps, which raises :class:`Interrupted` there, in
plain Python, with no computation half-dispatched. A second SIGINT, for a user who
will not wait for the current step (a long compile), ends the process at once with
exit code 130; that is as safe as a kill, because checkpoints are written atomically.

The ``jaxal`` program defers Ctrl-C from its first line, before JAX loads: a
``KeyboardInterrupt`` inside the import of jaxlib's native modules crashed the process
at exit (a segmentation fault), so a start-up Ctrl-C too is acted on once the imports
are done.

Outside :func:`deferred` (e.g. in a notebook), SIGINT behaves as usual and
:func:`check` costs one flag read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

__all__ = ["Interrupted", "deferred", "check", "requested"]


class Interrupted(KeyboardInterrupt):
    """Raised by :func:`check` at a safe point after a Ctrl-C."""


_flag = threading.Event()


def requested() -> bool:
    """Whether a Ctrl-C has arrived inside :func:`deferred` and not yet been acted on."""
    return _flag.is_set()


def check() -> None:
    """Raise :class:`Interrupted` if a Ctrl-C has arrived (call between steps)."""
    if _flag.is_set():
        _flag.clear()
        raise Interrupted()


def _on_sigint(signum, frame) -> None:  # noqa: ARG001 - the signal-handler signature
    if _flag.is_set():  # the second Ctrl-C: stop now
        sys.stderr.write("\ninterrupted again: stopping now (the last checkpoint is intact)\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(130)
    _flag.set()
    sys.stderr.write("\ninterrupt received: stopping after the current step (Ctrl-C again to stop at once)\n")
    sys.stderr.flush()


@contextlib.contextmanager
def deferred(after: Any = None) -> Iterator[None]:
    """Within this block, Ctrl-C is acted on at the next :func:`check` (see the module
    docstring). On leaving it, the SIGINT handler becomes ``after`` (default: the one
    before, e.g. ``signal.SIG_IGN`` to ignore a Ctrl-C once the work is done). A block
    inside another one leaves the handler and a pending Ctrl-C to the outer block.
    Only the main thread can install signal handlers; elsewhere this is a no-op."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is _on_sigint:
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _flag.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if after is None else after)
        _flag.clear()
