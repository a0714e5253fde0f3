"""Random sampling and the classic uncertainty scores: least confidence, margin, entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.model import predict_probs_then
from jaxal.ops.entropy import entropy as entropy_of
from jaxal.ops.random import host_rng
from jaxal.strategies.base import Context, positive_options, register, top_k_indices, top_k_on_mesh


@register("random")
def random(key: jax.Array, ctx: Context, budget: int) -> np.ndarray:
    """Uniformly random distinct pool indices."""
    n = int(np.shape(ctx.x_pool)[0])
    return host_rng(key).choice(n, budget, replace=False).astype(np.int64)


@jax.jit
def least_confidence_scores(probs: jax.Array) -> jax.Array:
    """``1 - max_c p_c``: higher is more uncertain."""
    return 1.0 - jnp.max(probs, axis=-1)


@jax.jit
def margin_scores(probs: jax.Array) -> jax.Array:
    """``-(p_1 - p_2)``, the negated gap between the two most likely classes."""
    top2 = jax.lax.top_k(probs, 2)[0]
    return -(top2[..., 0] - top2[..., 1])


def entropy_scores(probs: jax.Array) -> jax.Array:
    """Predictive entropy ``-sum_c p_c log p_c`` (0 log 0 = 0)."""
    return entropy_of(probs)


def _ranked(key: jax.Array, ctx: Context, budget: int, score, batch_size: int) -> np.ndarray:
    """Top-``budget`` pool rows by ``score(softmax(logits))``: on one device, or on ``ctx.mesh``."""
    if ctx.mesh is not None:
        return top_k_on_mesh(key, ctx, budget, _probs_score_rows, ctx.model, jax.tree_util.Partial(score),
                             chunk_rows=batch_size)
    return top_k_indices(predict_probs_then(ctx.model, ctx.x_pool, score, batch_size), budget, key)


def _probs_score_rows(model, score, xb: jax.Array) -> jax.Array:
    return score(jax.nn.softmax(model.apply(model.params, xb, None).astype(jnp.float32), axis=-1))


@register("least_confidence", check=positive_options("batch_size"))
def least_confidence(key: jax.Array, ctx: Context, budget: int, *, batch_size: int = 4096) -> np.ndarray:
    """Top-``budget`` pool points by ``1 - max_c p_c`` (ties broken at random)."""
    return _ranked(key, ctx, budget, least_confidence_scores, batch_size)


@register("margin", check=positive_options("batch_size"))
def margin(key: jax.Array, ctx: Context, budget: int, *, batch_size: int = 4096) -> np.ndarray:
    """Top-``budget`` pool points by the smallest gap between the two likeliest classes."""
    return _ranked(key, ctx, budget, margin_scores, batch_size)


@register("entropy", check=positive_options("batch_size"))
def entropy(key: jax.Array, ctx: Context, budget: int, *, batch_size: int = 4096) -> np.ndarray:
    """Top-``budget`` pool points by predictive entropy (ties broken at random)."""
    return _ranked(key, ctx, budget, entropy_scores, batch_size)
