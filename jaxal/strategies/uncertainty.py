"""Random sampling and the classic uncertainty scores: least confidence, margin, entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.strategies.base import Context, register
from jaxal.strategies.common import predict_probs, top_k_indices


@register("random")
def random(key: jax.Array, ctx: Context, budget: int) -> np.ndarray:
    """Uniformly random distinct pool indices."""
    n = int(np.shape(ctx.x_pool)[0])
    return np.asarray(jax.random.choice(key, n, (budget,), replace=False))


def least_confidence_scores(probs: jax.Array) -> jax.Array:
    """``1 - max_c p_c``: higher is more uncertain."""
    return 1.0 - jnp.max(probs, axis=-1)


def margin_scores(probs: jax.Array) -> jax.Array:
    """``-(p_1 - p_2)``, the negated gap between the two most likely classes."""
    top2 = jax.lax.top_k(probs, 2)[0]
    return -(top2[..., 0] - top2[..., 1])


def entropy_scores(probs: jax.Array) -> jax.Array:
    """Predictive entropy ``-sum_c p_c log p_c`` (0 log 0 = 0)."""
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=-1)


def _by_score(score_fn):
    def strategy(key: jax.Array, ctx: Context, budget: int, batch_size: int = 4096) -> np.ndarray:
        probs = predict_probs(ctx.model, ctx.x_pool, batch_size=batch_size)
        return top_k_indices(score_fn(probs), budget, key)

    strategy.__doc__ = f"Top-``budget`` pool points by {score_fn.__name__} (ties broken at random)."
    return strategy


least_confidence = register("least_confidence")(_by_score(least_confidence_scores))
margin = register("margin")(_by_score(margin_scores))
entropy = register("entropy")(_by_score(entropy_scores))
