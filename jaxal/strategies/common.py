"""Helpers shared by strategies: batched prediction and top-k with random tie-breaks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.model import Model


def batched(fn, x: Any, batch_size: int = 4096) -> jax.Array:
    """Apply ``fn`` to ``x`` in row chunks (bounded memory) and concatenate."""
    n = int(np.shape(x)[0])
    if n <= batch_size:
        return fn(jnp.asarray(x))
    outs = [fn(jnp.asarray(x[i : i + batch_size])) for i in range(0, n, batch_size)]
    return jnp.concatenate(outs, axis=0)


@jax.jit
def _apply(model: Model, x: jax.Array, key: jax.Array | None) -> jax.Array:
    # One compiled function for every call: ``Model`` is a pytree whose functions are
    # static, so the cache is keyed by (model functions, shapes), not rebuilt per call.
    return model.apply(model.params, x, key)


@jax.jit
def _features(model: Model, x: jax.Array) -> jax.Array:
    return model.features(model.params["body"], x)


def predict_logits(model: Model, x: Any, batch_size: int = 4096, key: jax.Array | None = None) -> jax.Array:
    """Logits ``[n, C]`` of ``x``, computed in jit-compiled chunks."""
    return batched(lambda xb: _apply(model, xb, key), x, batch_size)


def predict_probs(model: Model, x: Any, batch_size: int = 4096) -> jax.Array:
    """Softmax probabilities ``[n, C]`` of ``x``."""
    return jax.nn.softmax(predict_logits(model, x, batch_size), axis=-1)


def embed(model: Model, x: Any, batch_size: int = 4096) -> jax.Array:
    """Penultimate features ``[n, d]`` of ``x``, in chunks."""
    return batched(lambda xb: _features(model, xb), x, batch_size)


def top_k_indices(scores: Any, k: int, key: jax.Array | None = None) -> np.ndarray:
    """Indices of the ``k`` largest scores; exact ties broken uniformly at random."""
    s = np.asarray(scores, dtype=np.float64)
    if key is None:
        order = np.argsort(-s, kind="stable")
    else:
        tie = np.asarray(jax.random.uniform(key, s.shape))
        order = np.lexsort((tie, -s))
    return order[:k].astype(np.int64)
