"""Atomic file writes: a reader, or a process killed mid-write, sees the old file or the new one.

The data go to a temporary file in the target's directory (``.tmp-*``: a resumed run
removes leftovers), are ``fsync``\\ ed, and replace the target with ``os.replace``; the
directory is then ``fsync``\\ ed so the rename itself survives a crash. No JAX, no Flax:
checkpoints, labeling sessions and the files exchanged with labeling tools all use it.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, data: bytes, *, shared: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix.

    ``shared=False`` leaves the new file private to its owner (the temporary file's
    mode); ``shared=True`` gives it the mode of the file it replaces, or ``0o644`` for a
    new file: files other programs (annotators' tools) must read.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if shared:
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass
