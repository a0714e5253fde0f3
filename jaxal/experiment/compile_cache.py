"""JAX's persistent compilation cache, on by default for the command line.

Every ``jaxal run`` compiles the same programs (training steps, the look-ahead's
Cholesky, the kernels) for the same shapes; XLA compilation is most of a short run's
wall time. JAX can keep compiled executables on disk and reuse them across processes;
this module turns that on for a directory, with a threshold low enough that the
programs jaxal compiles (0.05–2 s each on CPU) are kept.
"""

from __future__ import annotations

import os

import jax

__all__ = ["default_directory", "enable", "resolve"]

#: Programs that compile faster than this are not written (the disk round trip costs more).
MIN_COMPILE_SECONDS = 0.05


def default_directory() -> str:
    """``$JAXAL_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/jaxal/xla`` (``~/.cache/jaxal/xla``)."""
    env = os.environ.get("JAXAL_COMPILE_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxal", "xla")


def resolve(setting: str | None) -> str | None:
    """The directory a ``--compile-cache`` setting means: ``None`` -> the default,
    ``"off"`` (or ``JAXAL_COMPILE_CACHE=off``) -> no cache, anything else -> that path."""
    value = default_directory() if setting is None else setting
    return None if value.strip().lower() in ("off", "none", "0", "") else value


def enable(directory: str, min_compile_seconds: float = MIN_COMPILE_SECONDS) -> str:
    """Keep compiled XLA executables in ``directory`` (created) for later processes.

    Process-wide (JAX's own configuration); call it before the first compilation.
    Returns the absolute directory.
    """
    path = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
