"""Shannon entropy of probability vectors, with ``0 log 0 = 0``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["entropy"]


@jax.jit
def entropy(p: jax.Array) -> jax.Array:
    """``-Σ_c p_c log p_c`` over the last axis (zeros contribute 0, never NaN); one
    compiled program per shape."""
    safe = jnp.where(p > 0, p, 1.0)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(safe), 0.0), axis=-1)
