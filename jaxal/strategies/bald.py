"""BALD (Houlsby et al., 2011; Gal et al., 2017): mutual information between the label
and the parameters,

    I(y; θ | x) = H(E_θ p(y|x, θ)) − E_θ H(p(y|x, θ)),

estimated from T samples of θ: MC-dropout passes (``model.logits(x, key_t)`` with T
explicit keys, when ``model.stochastic``) or the members of an ensemble
(``params_ensemble=[params_1, ...]``). The T passes are streamed: only the running
sums of p ``[n, C]`` and of H(p) ``[n]`` are kept per chunk of the pool.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.ops.entropy import entropy
from jaxal.strategies.base import BatchMode, Context, batch_options, pick, register, top_k_on_mesh
from jaxal.validation import check_positive

__all__ = ["bald_from_probs", "bald_scores", "bald", "check_parameter_samples"]


def bald_from_probs(probs: jax.Array) -> jax.Array:
    """BALD scores ``[n]`` from sampled probabilities ``[T, n, C]``."""
    return entropy(jnp.mean(probs, axis=0)) - jnp.mean(entropy(probs), axis=0)


@partial(jax.jit, static_argnames=("mode",))
def _accumulate(model, xs_per_sample, x, mode):
    """H(mean p) − mean H(p) over the samples: a scan over keys (``mode="key"``) or over
    stacked params (``mode="params"``)."""
    apply = _apply_params if mode == "params" else _apply_key
    apply = partial(apply, model)

    def step(carry, s):
        p = jax.nn.softmax(apply(s, x).astype(jnp.float32), axis=-1)
        return (carry[0] + p, carry[1] + entropy(p)), None

    n_samples = jax.tree_util.tree_leaves(xs_per_sample)[0].shape[0]
    logits_shape = jax.eval_shape(lambda s: apply(s, x), jax.tree_util.tree_map(lambda v: v[0], xs_per_sample))
    init = (jnp.zeros(logits_shape.shape, jnp.float32), jnp.zeros(x.shape[0], jnp.float32))
    (sp, sh), _ = jax.lax.scan(step, init, xs_per_sample)
    return entropy(sp / n_samples) - sh / n_samples


def bald_scores(
    model,
    x: Any,
    key: jax.Array | None = None,
    *,
    num_samples: int = 20,
    params_ensemble: Sequence[Any] | None = None,
    batch_size: int = 1024,
) -> jax.Array:
    """BALD scores ``[n]`` of ``x``: MC dropout with ``num_samples`` keys drawn from
    ``key``, or one pass per member of ``params_ensemble``."""
    samples, mode = _samples(model, key, num_samples, params_ensemble)
    n = int(np.shape(x)[0])
    outs = []
    for i, start in enumerate(range(0, n, batch_size)):
        xb = jnp.asarray(x[start : start + batch_size])
        s = samples if params_ensemble is not None else jax.vmap(lambda k: jax.random.fold_in(k, i))(samples)
        outs.append(_accumulate(model, s, xb, mode))
    return jnp.concatenate(outs)


def _samples(model, key: jax.Array | None, num_samples: int, params_ensemble: Sequence[Any] | None) -> tuple[Any, str]:
    """What the passes vary: stacked ensemble params (``"params"``) or dropout keys (``"key"``)."""
    if params_ensemble is not None:
        members = list(params_ensemble)
        if not members:
            raise ValueError("params_ensemble is empty: pass at least one params pytree")
        structs = {jax.tree_util.tree_structure(m) for m in members}
        if len(structs) != 1:
            raise ValueError("params_ensemble members must share one pytree structure")
        return jax.tree_util.tree_map(lambda *v: jnp.stack(v), *members), "params"
    if not model.stochastic:
        raise ValueError(_DETERMINISTIC)
    if key is None:
        raise ValueError("bald with MC dropout needs a key")
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    return jax.random.split(key, num_samples), "key"


def _rows_params(model, samples, xb: jax.Array) -> jax.Array:
    return _accumulate.__wrapped__(model, samples, xb, "params")


def _rows_keys(model, samples, xb: jax.Array, rows: jax.Array) -> jax.Array:
    """BALD of a chunk with one dropout mask per (sample, pool row): ``fold_in(key, row)``."""

    def step(carry, k):
        one = lambda xi, r: model.apply(model.params, xi[None], jax.random.fold_in(k, r))[0]  # noqa: E731
        p = jax.nn.softmax(jax.vmap(one)(xb, rows).astype(jnp.float32), axis=-1)
        return (carry[0] + p, carry[1] + entropy(p)), None

    c = jax.eval_shape(lambda: model.apply(model.params, xb[:1], samples[0])).shape[-1]
    init = (jnp.zeros((xb.shape[0], c), jnp.float32), jnp.zeros(xb.shape[0], jnp.float32))
    (sp, sh), _ = jax.lax.scan(step, init, samples)
    t = samples.shape[0]
    return entropy(sp / t) - sh / t


def _apply_params(model, params, x):
    return model.apply(params, x)


def _apply_key(model, key, x):
    return model.apply(model.params, x, key)


def check_parameter_samples(options: dict, model: Any, deterministic: str | None = None) -> None:
    """The options of a strategy that draws parameter samples as :func:`_samples` does
    (BALD, BatchBALD, EPIG, MC variance): ``batch_size >= 1``, ``num_samples >= 2``, and
    dropout in the model unless ``params_ensemble`` is given (``ValueError(deterministic)``,
    default: bald's message)."""
    check_positive(options, "batch_size")
    if options.get("num_samples", 2) < 2:
        raise ValueError(f"num_samples must be at least 2, got {options['num_samples']}")
    if options.get("params_ensemble") is None and model is not None and not model.stochastic:
        raise ValueError(deterministic or _DETERMINISTIC)


def _check(options: dict, *, budget: int, model: Any = None, sequential: bool = False) -> None:
    check_parameter_samples(options, model)
    batch_options(options)


_DETERMINISTIC = (
    "bald needs a stochastic model (MC dropout), and this model has no dropout. On the command line add "
    "--model-option dropout_rate=0.2 (mlp, cnn and wrn take it); in Python build the network with dropout and "
    "adapt it with jaxal.model.from_linen(..., stochastic_kwargs={...}), or pass params_ensemble=[params, ...]"
)


@register("bald", check=_check)
def bald(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    num_samples: int = 20,
    params_ensemble: Sequence[Any] | None = None,
    batch_size: int = 1024,
    batch: BatchMode = "topk",
    beta: float = 1.0,
) -> np.ndarray:
    """Top-``budget`` pool points by BALD (MC dropout or an ensemble of params), or with
    ``batch="power"`` (PowerBALD), ``"softmax"`` or ``"softrank"`` a batch sampled with
    temperature ``beta`` (:func:`~jaxal.strategies.base.pick`).

    On ``ctx.mesh`` the dropout masks are drawn per pool row (from ``fold_in(key, row)``),
    so they do not depend on how the pool is chunked or sharded: the same indices on any
    number of devices (other masks than the single-device path, which draws per chunk).
    """
    k_mc, k_tie = jax.random.split(key)
    if ctx.mesh is not None:
        samples, mode = _samples(ctx.model, k_mc, num_samples, params_ensemble)
        row_fn = _rows_params if mode == "params" else _rows_keys
        return top_k_on_mesh(k_tie, ctx, budget, row_fn, ctx.model, samples, chunk_rows=batch_size,
                             row_index=mode == "key", batch=batch, beta=beta)
    scores = bald_scores(
        ctx.model, ctx.x_pool, k_mc, num_samples=num_samples, params_ensemble=params_ensemble, batch_size=batch_size
    )
    # MI is >= 0 up to float32 round-off: clip for batch="power" (p ∝ s^β needs s >= 0).
    return pick(np.maximum(np.asarray(scores), 0.0) if batch == "power" else scores, budget, k_tie, batch, beta)
