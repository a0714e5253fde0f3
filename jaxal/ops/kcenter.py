"""Greedy k-center: repeatedly take the point farthest from every chosen centre.

    c_t = argmax_{x ∈ U \\ S} min_{z ∈ L ∪ S} ‖x − z‖²

The running min distance ``[N]`` is kept, so a step is one matrix-vector product over
the points. The initial min over the already-chosen set ``L`` is computed in chunks of
``L``'s rows: memory O(N·chunk), never N × L. Used by the coreset strategy on
penultimate features.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.validation import check_budget, check_finite

__all__ = ["min_sqdist_to_set", "k_center_greedy"]


@partial(jax.jit, static_argnames=("chunk",))
def _min_sqdist_to_set(x, z, chunk):
    nx = jnp.sum(x * x, axis=1)
    m = z.shape[0]
    pad = (-m) % chunk
    zc = jnp.pad(z, ((0, pad), (0, 0))).reshape(-1, chunk, z.shape[1])
    valid = (jnp.arange(m + pad) < m).reshape(-1, chunk)

    def step(best, blk):
        zb, ok = blk
        d2 = nx[:, None] + jnp.sum(zb * zb, axis=1)[None, :] - 2.0 * (x @ zb.T)
        d2 = jnp.where(ok[None, :], d2, jnp.inf)
        return jnp.minimum(best, jnp.maximum(jnp.min(d2, axis=1), 0.0)), None

    best, _ = jax.lax.scan(step, jnp.full(x.shape[0], jnp.inf, x.dtype), (zc, valid))
    return best


def min_sqdist_to_set(x: jax.Array, z: jax.Array, *, chunk: int = 256) -> jax.Array:
    """``min_j ‖x_i − z_j‖²`` for every row of ``x [N, d]`` over ``z [M, d]`` (``inf``
    when M = 0); ``z`` is scanned ``chunk`` rows at a time (memory O(N·chunk))."""
    x = jnp.asarray(x, jnp.float32)
    z = jnp.asarray(z, jnp.float32)
    if z.shape[0] == 0:
        return jnp.full(x.shape[0], jnp.inf, jnp.float32)
    return _min_sqdist_to_set(x, z, int(min(chunk, z.shape[0])))


@partial(jax.jit, static_argnames=("budget",))
def _greedy(key, x, mind2, n_valid, budget):
    n = x.shape[0]
    nx = jnp.sum(x * x, axis=1)
    padding = jnp.arange(n) >= n_valid  # rows a sharded pool was padded with: never picked
    # No labeled point: the first centre is uniform (every min distance is +inf).
    start = jnp.where(jnp.isinf(jnp.where(padding, jnp.inf, mind2)).all(), jax.random.randint(key, (), 0, n_valid), -1)

    def body(i, carry):
        mind2, chosen, picks = carry
        c = jnp.where((i == 0) & (start >= 0), start, jnp.argmax(jnp.where(chosen, -1.0, mind2)))
        c = c.astype(jnp.int32)
        xc = jax.lax.dynamic_index_in_dim(x, c, axis=0, keepdims=False)
        d2 = jnp.maximum(nx + nx[c] - 2.0 * (x @ xc), 0.0)
        chosen = chosen.at[c].set(True)
        return jnp.minimum(mind2, d2), chosen, picks.at[i].set(c)

    init = (mind2, padding, jnp.zeros(budget, jnp.int32))
    return jax.lax.fori_loop(0, budget, body, init)[2]


def k_center_greedy(
    key: jax.Array, x_pool: jax.Array, x_labeled: jax.Array, budget: int, *, chunk: int = 256,
    n_valid: int | None = None,
) -> np.ndarray:
    """k-centre greedy picks ``[B]`` over pool features ``[N, d]`` given labeled features
    ``[L, d]`` (L may be 0: the first pick is then uniform). Indices in pick order.

    ``x_pool`` may be a global array sharded by rows (:mod:`jaxal.pool`) whose rows from
    ``n_valid`` on are padding; the picks are the same on any number of devices (each
    step's distances are row-local and the farthest point is an order-free argmax).
    """
    check_finite("pool features", x_pool)
    check_finite("labeled features", x_labeled)
    n = int(np.shape(x_pool)[0]) if n_valid is None else int(n_valid)
    budget = check_budget(budget, n)
    x = jnp.asarray(x_pool, jnp.float32)
    mind2 = min_sqdist_to_set(x, x_labeled, chunk=chunk)
    return np.asarray(_greedy(key, x, mind2, np.int32(n), budget))
