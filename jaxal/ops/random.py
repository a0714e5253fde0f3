"""Random draws that compile nothing per round.

``jax.random.permutation(key, n)`` called eagerly compiles three small programs for
every new ``n`` (the ``arange``, the shuffle, and any slice after it), and a jitted
one still compiles once per ``n``; an active learning run meets a new ``n`` every
round (labeled set, pool). Draws whose values only steer host-side bookkeeping
(which rows form a mini-batch, which pool points are candidates, how ties break)
are therefore made on the host with NumPy, from a generator seeded by the bits of a
JAX key: reproducible from the key, and free of XLA programs.

``split`` is ``jax.random.split`` returning a tuple in one compiled program (the
eager call followed by tuple unpacking compiles two).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

__all__ = ["host_rng", "host_permutation", "split"]


def _key_bits(key: jax.Array) -> np.ndarray:
    data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.asarray(data, dtype=np.uint32).ravel()


def host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator (PCG64) seeded from the bits of ``key``: the same key gives the
    same stream on every machine, and no XLA program is compiled or run."""
    return np.random.default_rng([int(b) for b in _key_bits(key)])


def host_permutation(key: jax.Array, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` (int64), drawn on the host from ``key``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return host_rng(key).permutation(int(n))


@functools.partial(jax.jit, static_argnums=1)
def _split(key: jax.Array, num: int) -> tuple[jax.Array, ...]:
    return tuple(jax.random.split(key, num))


def split(key: jax.Array, num: int = 2) -> tuple[jax.Array, ...]:
    """``tuple(jax.random.split(key, num))`` (the same keys) as one compiled program per ``num``."""
    return _split(key, num)
