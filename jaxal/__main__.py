"""The ``jaxal`` program (also ``python -m jaxal``): :func:`jaxal.cli.main`, exit code.

Kept apart from :mod:`jaxal.cli` so that Ctrl-C is handled from the program's first
line: ``import jaxal`` loads nothing, so only the interpreter's own start-up (tens of
milliseconds, before any of this code runs) is outside it.
"""

import signal
import sys


def console() -> None:
    """Run the command line and exit with its code: 130 after Ctrl-C (one line, no
    traceback) whenever it lands, also while JAX is still loading. Once the work is
    done Ctrl-C is ignored, so a late one cannot turn a finished run's exit (JAX's
    teardown takes a moment) into a signal death."""
    code = 130
    try:
        try:
            from jaxal.cli import main

            code = main()
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # before main()'s own handling was in place
        print("\njaxal: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    console()
