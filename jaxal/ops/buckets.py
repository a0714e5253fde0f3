"""Shape buckets: a few sizes that every growing array is padded to.

An active-learning run meets a new labeled-set size every round, and XLA compiles
one program per shape. Padding to a bucket makes rounds share programs. Buckets are
powers of two up to 512 (at most 2× rows, while sizes are small and compiling costs
more than computing), then multiples of 256 (at most 1.5×, and less as sizes grow).
"""

from __future__ import annotations

__all__ = ["bucket"]

_STEP_FROM = 512
_STEP = 256


def bucket(n: int, minimum: int = 16) -> int:
    """The bucket size for ``n`` rows: the smallest of ``minimum·2^k`` (up to 512) or
    of the multiples of 256 beyond, that is ``>= n``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if n > _STEP_FROM:
        return -(-n // _STEP) * _STEP
    size = max(int(minimum), 1)
    while size < n:
        size *= 2
    return min(size, _STEP_FROM)
