"""Stochastic batch acquisition: sample a batch from a distribution over single-point scores.

Taking the top ``B`` of a single-point score (entropy, BALD, ...) fills a batch with
near-copies when the pool has them: neighbours score alike. Kirsch et al. (2023,
"Stochastic batch acquisition") sample the batch instead, without replacement, with
probabilities that grow with the score; this keeps most of the score's preference
and spreads the batch, at the cost of one sort. Three maps from scores ``s`` to
unnormalised probabilities, with a temperature ``β``:

- ``softmax``: ``p ∝ exp(β s)`` (scores on any scale; ``β`` in units of 1/score);
- ``power``: ``p ∝ s^β`` (scores ``≥ 0``, such as mutual information or entropy);
- ``softrank``: ``p ∝ rank^(−β)`` with rank 1 the best score (scale-free).

``β → ∞`` recovers top-``B`` (ties broken at random), ``β = 0`` uniform sampling.

Sampling ``B`` without replacement proportionally to ``p`` (each pick drawn from what
is left, renormalised: the Plackett-Luce model) is the top ``B`` of
``log p + Gumbel`` noise, one draw per row, so the whole batch is one perturbation and
one partial sort. Drawn on the host from the key's bits (:func:`jaxal.ops.random.host_rng`):
no XLA program per pool size. Rows scoring ``-inf`` (padding, already-chosen points)
are never drawn.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxal.ops.random import host_rng
from jaxal.validation import check_choice

__all__ = ["MODES", "log_weights", "stochastic_batch"]

MODES = ("softmax", "power", "softrank")


def log_weights(scores: Any, mode: str = "power", beta: float = 1.0) -> np.ndarray:
    """``log p`` (unnormalised, float64) of each row under ``mode`` with temperature ``beta``;
    ``-inf`` for rows that must never be drawn (scores of ``-inf``, or 0 under ``power``
    with ``beta > 0``)."""
    check_choice("mode", mode, MODES)
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    if np.isnan(s).any():
        raise ValueError(f"scores hold {int(np.isnan(s).sum())} NaN value(s); a strategy's scores must be numbers")
    valid = s > -np.inf
    out = np.full(s.shape, -np.inf)
    if mode == "softmax":
        out[valid] = beta * s[valid]
    elif mode == "power":
        if np.any(s[valid] < 0):
            raise ValueError(f"mode='power' needs scores >= 0 (p ∝ s^β), got a minimum of {s[valid].min():.4g}; "
                             "use mode='softmax' or 'softrank' for scores of any sign")
        with np.errstate(divide="ignore"):
            out[valid] = beta * np.log(s[valid]) if beta > 0 else 0.0
    else:
        order = np.argsort(-s[valid], kind="stable")
        ranks = np.empty(order.shape[0])
        ranks[order] = np.arange(1, order.shape[0] + 1)
        out[valid] = -beta * np.log(ranks)
    return out


def stochastic_batch(key: jax.Array, scores: Any, budget: int, mode: str = "power", beta: float = 1.0) -> np.ndarray:
    """``budget`` distinct row indices (int64) drawn without replacement with
    probabilities :func:`log_weights` (Gumbel top-``budget``), in draw order.

    Raises:
      ValueError: a bad ``mode`` / ``beta`` / ``budget``, NaN scores, negative scores
        under ``power``, or fewer drawable rows than ``budget``.
    """
    logp = log_weights(scores, mode, beta)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    drawable = int(np.sum(logp > -np.inf))
    if budget > drawable:
        raise ValueError(f"budget={budget} but only {drawable} rows can be drawn (the others score -inf"
                         + (" or 0 under mode='power'" if mode == "power" else "") + ")")
    keys = logp + host_rng(key).gumbel(size=logp.shape)
    top = np.argpartition(-keys, budget - 1)[:budget]
    return top[np.argsort(-keys[top], kind="stable")].astype(np.int64)
