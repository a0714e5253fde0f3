"""BatchBALD and EPIG strategies (the maths: :mod:`jaxal.ops.batchbald`).

Both need the class probabilities of many points under the *same* K samples of the
parameters, ``[K, N, C]``: a joint over points (BatchBALD's label configurations, EPIG's
pool–target pairs) is only meaningful when ``θ_k`` is one network for all of them. An
ensemble gives that for free. With MC dropout, a mask drawn per row (what a batched
``nn.Dropout`` does, and what :func:`~jaxal.strategies.bald.bald_scores` uses, where only
per-point marginals matter) would make the points' labels independent given ``k`` and
the joint information vanish; here every row is evaluated under the same mask per
sample (the model is applied row by row, vmapped, with one key per sample).

The samples are drawn like ``bald``'s (:func:`jaxal.strategies.bald._samples`): MC
dropout when the model is stochastic, or ``params_ensemble=[params, ...]``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.ops.batchbald import batchbald as batchbald_select
from jaxal.ops.batchbald import epig_scores
from jaxal.ops.random import host_rng, split
from jaxal.strategies.bald import _DETERMINISTIC, _samples, check_parameter_samples
from jaxal.strategies.base import Context, Query, register, top_k_indices
from jaxal.validation import check_positive

__all__ = ["sampled_probs", "batchbald", "epig"]


@partial(jax.jit, static_argnames=("mode",))
def _probs_chunk(model, samples, xb: jax.Array, mode: str) -> jax.Array:
    """``[K, b, C]`` probabilities of a chunk: one pass per stacked params member, or one
    dropout mask per key shared by every row."""
    if mode == "params":
        logits = jax.vmap(lambda p: model.apply(p, xb))(samples)
    else:
        def one_key(k):
            return jax.vmap(lambda xi: model.apply(model.params, xi[None], k)[0])(xb)

        logits = jax.vmap(one_key)(samples)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def sampled_probs(
    model,
    x: Any,
    key: jax.Array | None = None,
    *,
    num_samples: int = 20,
    params_ensemble: Sequence[Any] | None = None,
    batch_size: int = 1024,
) -> jax.Array:
    """``p(y | x_n, θ_k)`` ``[K, N, C]`` (float32) for K parameter samples shared by every
    row: ``num_samples`` dropout masks from ``key``, or the members of ``params_ensemble``.
    ``x`` is read ``batch_size`` rows at a time; the result holds ``K · N · C`` floats."""
    samples, mode = _samples(model, key, num_samples, params_ensemble)
    n = int(np.shape(x)[0])
    return jnp.concatenate([_probs_chunk(model, samples, jnp.asarray(x[s : s + batch_size]), mode)
                            for s in range(0, n, batch_size)], axis=1)


def _check_common(options: dict, model: Any, name: str) -> None:
    check_parameter_samples(options, model, f"{name} draws its parameter samples like bald: {_DETERMINISTIC}")


def _check_batchbald(options: dict, *, budget: int, model: Any = None, sequential: bool = False) -> None:
    _check_common(options, model, "batchbald")
    check_positive(options, "num_configurations")


def _check_epig(options: dict, *, budget: int, model: Any = None, sequential: bool = False) -> None:
    _check_common(options, model, "epig")
    check_positive(options, "num_targets")
    if options.get("candidates") is not None:
        check_positive(options, "candidates")
        if options["candidates"] < budget:
            raise ValueError(f"candidates={options['candidates']} is smaller than the budget ({budget})")


def _probs_for(ctx: Context, key: jax.Array, x: Any, name: str, num_samples: int,
               params_ensemble: Sequence[Any] | None, batch_size: int) -> jax.Array:
    """The sampled probabilities of ``x``, after refusing what the strategy cannot do."""
    if ctx.mesh is not None:
        raise ValueError(f"{name} runs on one device: pass mesh=None (the pool is small enough for its "
                         "[samples, pool, classes] probabilities)")
    if getattr(ctx, "task", "classification") != "classification":
        raise ValueError(f"{name} needs class probabilities: it does not apply to task={ctx.task!r}")
    if params_ensemble is None and not ctx.model.stochastic:
        raise ValueError(f"{name} draws its parameter samples like bald: {_DETERMINISTIC}")
    k = len(params_ensemble) if params_ensemble is not None else num_samples
    need = 4 * k * int(np.shape(x)[0]) * ctx.num_classes
    if ctx.memory_bytes is not None and need > ctx.memory_bytes:
        raise ValueError(f"{name} keeps [samples, points, classes] probabilities, {need:,} bytes, over "
                         f"memory_bytes={ctx.memory_bytes:,}")
    return sampled_probs(ctx.model, x, key, num_samples=num_samples, params_ensemble=params_ensemble,
                         batch_size=batch_size)


@register("batchbald", check=_check_batchbald)
def batchbald(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    num_samples: int = 20,
    params_ensemble: Sequence[Any] | None = None,
    batch_size: int = 1024,
    num_configurations: int = 10_000,
) -> Query:
    """Greedy BatchBALD (Kirsch et al., 2019): each pick maximises the joint mutual
    information between the batch's labels and the parameters. A near-duplicate of a
    pick adds only what a second draw of that label would tell (less than its BALD
    score), so the batch spreads out where top-k BALD takes copies.

    ``num_configurations`` bounds the label configurations of the picked points kept
    per parameter sample (exact up to it, that many drawn beyond): memory
    ``4 · K · num_configurations`` bytes of state, time ``K · N · num_configurations · C``
    per pick. ``info["joint_mi"]``: the joint MI after each pick.
    """
    k_mc, k_conf = split(key)
    probs = _probs_for(ctx, k_mc, ctx.x_pool, "batchbald", num_samples, params_ensemble, batch_size)
    idx, info = batchbald_select(probs, budget, k_conf, num_configurations=num_configurations)
    return Query(indices=idx, info=info)


@register("epig", check=_check_epig)
def epig(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    num_samples: int = 20,
    params_ensemble: Sequence[Any] | None = None,
    batch_size: int = 1024,
    num_targets: int = 200,
    candidates: int | None = None,
) -> Query:
    """Top-``budget`` pool points by EPIG (Bickford Smith et al., 2023): the information
    a label carries about the labels at target inputs.

    The target distribution is the pool itself (the paper's unlabelled-pool setting):
    ``num_targets`` pool rows drawn uniformly without replacement from ``key`` (all
    rows when the pool is smaller). ``candidates``: score only that many pool rows drawn
    at random (bounds the cost on a large pool); ``None`` scores all of them.
    """
    k_mc, k_tgt, k_cand, k_tie = split(key, 4)
    n = int(np.shape(ctx.x_pool)[0])
    targets = np.sort(host_rng(k_tgt).choice(n, size=min(num_targets, n), replace=False))
    rows = np.arange(n) if candidates is None or candidates >= n else np.sort(
        host_rng(k_cand).choice(n, size=candidates, replace=False))
    both = np.concatenate([rows, targets])  # one set of samples for both: the same θ_k
    probs = _probs_for(ctx, k_mc, np.asarray(ctx.x_pool)[both], "epig", num_samples, params_ensemble, batch_size)
    scores = np.asarray(epig_scores(probs[:, : rows.shape[0]], probs[:, rows.shape[0]:]))
    picks = rows[top_k_indices(scores, budget, k_tie)]
    info = {"epig_max": float(scores.max()), "epig_mean": float(scores.mean()), "num_targets": int(targets.shape[0]),
            "scored": int(rows.shape[0])}
    return Query(indices=picks.astype(np.int64), info=info)
