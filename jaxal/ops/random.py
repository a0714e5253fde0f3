"""Random permutations compiled as one program per size.

``jax.random.permutation(key, n)`` called eagerly compiles three small programs for
every new ``n`` (the ``arange``, the shuffle, and any slice after it); an active
learning run meets a new ``n`` every round (labeled set, pool). These helpers compile
the whole thing once per size and return exactly the values the eager call gives.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["permutation", "permutation_batches"]


@functools.partial(jax.jit, static_argnums=1)
def permutation(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.permutation(key, n)`` as one compiled program per ``n``."""
    return jax.random.permutation(key, n)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def permutation_batches(key: jax.Array, n: int, k: int, b: int) -> jax.Array:
    """The first ``k·b`` entries of ``jax.random.permutation(key, n)`` as ``[k, b]`` batches."""
    return jax.random.permutation(key, n)[: k * b].reshape(k, b)
