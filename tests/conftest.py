"""pytest set-up shared by every test file.

The shared tiny models live in ``tests/models_for_tests.py``, a plain module the test
files import (``from models_for_tests import tiny_mlp``), not here: each file calls
them with its own shapes and seeds, so they are builders rather than fixtures, and a
``conftest`` is not meant to be imported by name. This file only puts ``tests/`` on
``sys.path`` so that import works under every import mode: pytest's default
``prepend`` mode does it already, ``--import-mode=importlib`` does not.
"""

import pathlib
import sys

_TESTS = str(pathlib.Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# Hermetic tests: the command line's persistent compilation cache (on by default for
# users) stays off unless a test turns it on in its own directory.
import os  # noqa: E402

os.environ.setdefault("JAXAL_COMPILE_CACHE", "off")

# The suite is mostly XLA compiling many small programs, and no test asserts a timing:
# the XLA CPU backend's optimisation level 0 compiles them about 1.3x as fast (the same
# HLO programs; only the machine code generated for them is less optimised). Set before
# JAX loads, and inherited by the subprocesses tests start (benchmarks' --quick modes,
# notebooks, multi-process runs). JAXAL_TEST_XLA_OPT=1 keeps the default optimisation.
if os.environ.get("JAXAL_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

