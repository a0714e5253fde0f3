"""Coreset (Sener & Savarese, 2018): k-centre greedy on penultimate features.

Each step picks the pool point farthest from everything labeled or already picked,
``c_t = argmax_{x ∈ U \\ S} min_{z ∈ L ∪ S} ‖h_x − h_z‖²`` (:mod:`jaxal.ops.kcenter`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.model import embed, features_rows
from jaxal.ops.kcenter import k_center_greedy, min_sqdist_to_set  # noqa: F401  (re-exported)
from jaxal.strategies.base import Context, on_mesh, positive_options, register

__all__ = ["coreset"]


@register("coreset", check=positive_options("batch_size", "chunk"))
def coreset(key: jax.Array, ctx: Context, budget: int, *, batch_size: int = 4096, chunk: int = 256) -> np.ndarray:
    """k-centre greedy on ``embed(model, x)``, distances to every labeled point.

    On ``ctx.mesh`` the pool's features ``[N, d]`` are cached sharded by rows for the
    query (``N·d`` floats, bounded by ``ctx.memory_bytes``); each step is row-local plus
    one global argmax.
    """
    if ctx.mesh is not None:
        feats = on_mesh(ctx, features_rows, ctx.model, chunk_rows=batch_size, what="the pool's features")
        hp, n_valid = feats.data, feats.n
    else:
        hp, n_valid = embed(ctx.model, ctx.x_pool, batch_size), None
    if int(np.shape(ctx.x_labeled)[0]) > 0:
        hl = np.asarray(embed(ctx.model, ctx.x_labeled, batch_size))
    else:
        hl = jnp.zeros((0, hp.shape[1]), jnp.float32)
    return k_center_greedy(key, hp, hl, budget, chunk=chunk, n_valid=n_valid)
