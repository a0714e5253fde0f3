"""The ``jaxal`` program (also ``python -m jaxal``): :func:`jaxal.cli.main`, exit code.

Kept apart from :mod:`jaxal.cli` so that Ctrl-C is handled from the program's first
line: ``import jaxal`` loads nothing, so only the interpreter's own start-up (tens of
milliseconds, before any of this code runs) is outside it.
"""

import signal
import sys


def console() -> None:
    """Run the command line and exit with its code: 130 after Ctrl-C (one line, no
    traceback) whenever it lands, also while JAX is still loading: the handler of
    :mod:`jaxal.interrupt` is installed before anything else, so a Ctrl-C during the
    imports is acted on once they are done (a ``KeyboardInterrupt`` raised inside the
    import of jaxlib's native modules crashed the process at exit). Once the work is
    done Ctrl-C is ignored, so a late one cannot turn a finished run's exit (JAX's
    teardown takes a moment) into a signal death."""
    from jaxal import interrupt  # standard library only

    code = 130
    with interrupt.deferred(after=signal.SIG_IGN):
        try:
            from jaxal.cli import main

            code = main()
            interrupt.check()  # a Ctrl-C main() did not act on (--help, a parse error)
        except KeyboardInterrupt:
            print("\njaxal: interrupted", file=sys.stderr)
            code = 130
    sys.exit(code)


if __name__ == "__main__":
    console()
