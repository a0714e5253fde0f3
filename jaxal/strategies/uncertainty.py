"""Random sampling and the classic uncertainty scores: least confidence, margin, entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.model import predict_logits_then
from jaxal.ops.entropy import entropy as entropy_of
from jaxal.ops.random import host_rng
from jaxal.strategies.base import BatchMode, Context, pick, positive_options, register, top_k_on_mesh


@register("random", tasks=("classification", "regression"))
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
    p1, p2 = _top_two(probs)
    return p2 - p1


def _top_two(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The largest and second largest entry of each row (equal when the top is tied): two
    max passes, ~10x faster on CPU than ``lax.top_k(a, 2)``."""
    first = jnp.argmax(a, axis=-1)
    second = jnp.where(jnp.arange(a.shape[-1]) == first[..., None], -jnp.inf, a)
    return jnp.max(a, axis=-1), jnp.max(second, axis=-1)


def entropy_scores(probs: jax.Array) -> jax.Array:
    """Predictive entropy ``-sum_c p_c log p_c`` (0 log 0 = 0)."""
    return entropy_of(probs)


# The strategies score the logits directly: with z = l − max l, e = exp z and s = Σ e,
# p = e/s, so 1 − max p = 1 − 1/s, p₁ − p₂ = (1 − exp(z₂))/s and H = log s − Σ e·z / s.
# One exp per logit and one log per row (the probability forms above take a softmax and
# then a log per class: on CPU 3x slower for entropy, 12x for margin at 10⁶ × 10).
def _softmax_parts(logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    z = logits.astype(jnp.float32)
    z = z - jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(z)
    return z, e, jnp.sum(e, axis=-1)


def least_confidence_from_logits(logits: jax.Array) -> jax.Array:
    """:func:`least_confidence_scores` of ``softmax(logits)``, from the logits."""
    _, _, s = _softmax_parts(logits)
    return 1.0 - 1.0 / s


def margin_from_logits(logits: jax.Array) -> jax.Array:
    """:func:`margin_scores` of ``softmax(logits)``, from the logits."""
    z, _, s = _softmax_parts(logits)
    return -(1.0 - jnp.exp(_top_two(z)[1])) / s


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """:func:`entropy_scores` of ``softmax(logits)``, from the logits."""
    z, e, s = _softmax_parts(logits)
    return jnp.log(s) - jnp.sum(e * z, axis=-1) / s


def _ranked(key: jax.Array, ctx: Context, budget: int, score, batch_size: int, batch: str, beta: float) -> np.ndarray:
    """The batch by ``score(logits)`` (top-``budget`` or a stochastic batch, :func:`pick`):
    on one device, or on ``ctx.mesh``."""
    if ctx.mesh is not None:
        return top_k_on_mesh(key, ctx, budget, _logits_score_rows, ctx.model, jax.tree_util.Partial(score),
                             chunk_rows=batch_size, batch=batch, beta=beta)
    return pick(predict_logits_then(ctx.model, ctx.x_pool, score, batch_size), budget, key, batch, beta)


def _logits_score_rows(model, score, xb: jax.Array) -> jax.Array:
    return score(model.apply(model.params, xb, None))


# Each score strategy takes ``batch`` / ``beta``: ``batch="topk"`` keeps the ``budget``
# best scores; "power", "softmax" or "softrank" samples the batch with temperature
# ``beta`` (Kirsch et al., 2023: fewer near-copies in one batch; base.pick).


@register("least_confidence", check=positive_options("batch_size", batch=True))
def least_confidence(key: jax.Array, ctx: Context, budget: int, *, batch_size: int = 4096,
                     batch: BatchMode = "topk", beta: float = 1.0) -> np.ndarray:
    """Pool points by ``1 - max_c p_c`` (ties broken at random); ``batch``/``beta``: :func:`~jaxal.strategies.base.pick`."""
    return _ranked(key, ctx, budget, least_confidence_from_logits, batch_size, batch, beta)


@register("margin", check=positive_options("batch_size", batch=True))
def margin(key: jax.Array, ctx: Context, budget: int, *, batch_size: int = 4096,
           batch: BatchMode = "topk", beta: float = 1.0) -> np.ndarray:
    """Pool points by the smallest gap between the two likeliest classes; ``batch``/``beta``:
    :func:`~jaxal.strategies.base.pick` (``power`` samples ``∝ (1 − p₁ + p₂)^β``)."""
    return _ranked(key, ctx, budget, _one_minus_gap if batch == "power" else margin_from_logits, batch_size,
                   batch, beta)


def _one_minus_gap(logits: jax.Array) -> jax.Array:
    """``1 − (p₁ − p₂) ∈ [0, 1]``: margin's ranking, and ``>= 0`` as ``batch="power"`` needs."""
    return 1.0 + margin_from_logits(logits)


@register("entropy", check=positive_options("batch_size", batch=True))
def entropy(key: jax.Array, ctx: Context, budget: int, *, batch_size: int = 4096,
            batch: BatchMode = "topk", beta: float = 1.0) -> np.ndarray:
    """Pool points by predictive entropy (ties broken at random); ``batch``/``beta``: :func:`~jaxal.strategies.base.pick`."""
    return _ranked(key, ctx, budget, entropy_from_logits, batch_size, batch, beta)
