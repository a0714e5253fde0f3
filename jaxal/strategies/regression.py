"""Regression strategies: predictive variance, the NTK Gaussian process, kernel batch selection.

The model's outputs ``f(x) ∈ R^D`` were trained with squared loss. Linearised around
its parameters, the network is a Gaussian process whose kernel is the empirical NTK
``Θ(x, x') = J(x) J(x')ᵀ``; conditioning it on the labeled set with observation noise
``σ²`` gives the posterior kernel ``k_post`` (:mod:`jaxal.ops.kernel_select`). The
kernel is given by features, ``k(x, x') = φ(x)·φ(x')``, chosen by the ``features``
option:

- ``"ntk_sketch"`` (default): the sketched NTK ``J(x) V / √k``, ``k = sketch_dim``
  random Gaussian directions of parameter space (:func:`jaxal.ntk.sketch.ntk_sketch`);
  an unbiased estimate of the trace NTK ``Σ_c Θ_cc`` at ``k`` JVPs per example.
- ``"last_layer"``: ``[h(x), 1]`` (the head's NTK for one output, ``h·h' + 1``).
- ``"ntk"``: the exact Jacobian ``[D·P]`` (only when ``D·P <= MAX_EXACT_FEATURES``).

For ``D > 1`` outputs the kernel is the trace NTK used as ``k ⊗ I_D`` (each output an
independent GP with the same kernel); per-output scores are then all equal to the
summed one up to a constant, so the rankings are those of this scalar kernel.

Noise: the ``noise`` option is **relative**: ``σ² = noise · mean_x k(x, x)``, the mean
over the labeled and pool rows of the kernel's diagonal, so one value fits any feature
scale (the sketch and the last layer differ by orders of magnitude).

Strategies (all return ``budget`` distinct pool indices):

- ``mc_variance``: the ``budget`` largest predictive variances ``Σ_c Var_t f_c(x; θ_t)``
  over MC-dropout passes or the members of an ensemble (regression only).
- ``ntk_variance``: the ``budget`` largest posterior variances ``k_post(x, x)`` of the
  linearised model (regression only).
- ``ntk_emoc``: expected model output change of the NTK look-ahead for squared loss:
  labelling ``x'`` with ``y' ~ N(f(x'), k_post(x',x') + σ²)`` changes the linearised
  predictions by ``Δf(x) = k_post(x,x')(y' − f(x'))/(k_post(x',x') + σ²)``, whose
  expected mean absolute value over the evaluation points is
  ``√(2/π)·mean_x |k_post(x,x')| / √(k_post(x',x') + σ²)``; the evaluation points are
  ``eval_size`` pool rows drawn from the key (regression only).
- ``maxdet``, ``maxdist``, ``kmeanspp_features``, ``lcmd``: the batch selectors of
  :mod:`jaxal.ops.kernel_select` on these features (greedy log-determinant, farthest
  point, k-means++ seeding, largest cluster maximum distance). They use no targets,
  so they also run on classification models (the kernel is then the trace NTK of the
  logits).

``posterior=False`` uses the prior kernel (no conditioning on the labeled rows; maxdet
still conditions on its own picks). On a device mesh these strategies compute on one
device, reading the pool in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.ntk.sketch import jacobian_features, last_layer_features, ntk_sketch
from jaxal.ops import kernel_select as ks
from jaxal.ops.buckets import bucket
from jaxal.ops.random import host_permutation, split
from jaxal.strategies.bald import _samples, check_parameter_samples
from jaxal.strategies.base import Context, Query, register, top_k_indices
from jaxal.validation import check_finite, check_positive

__all__ = ["mc_variance", "ntk_variance", "ntk_emoc", "maxdet", "maxdist", "kmeanspp_features", "lcmd",
           "kernel_features", "absolute_noise", "mc_variance_scores", "FEATURES", "MAX_EXACT_FEATURES",
           "DEFAULT_NOISE"]

Features = Literal["ntk_sketch", "last_layer", "ntk"]
FEATURES = ("ntk_sketch", "last_layer", "ntk")
#: The widest exact Jacobian (``D·P`` columns) ``features="ntk"`` builds.
MAX_EXACT_FEATURES = 4096
#: Default relative noise: ``σ²`` is this fraction of the kernel's mean diagonal.
DEFAULT_NOISE = 1e-3
_TASKS = ("classification", "regression")


# --------------------------------------------------------------------------- checks


def _require_task(ctx: Context, name: str, tasks: tuple[str, ...] = ("regression",)) -> None:
    task = getattr(ctx, "task", "classification")
    if task not in tasks:
        if tasks == ("regression",):
            raise ValueError(f"{name} is a regression strategy (it needs real-valued outputs trained with squared "
                             f"loss, ctx.task='regression'); this context has task={task!r}")
        raise ValueError(f"{name} supports task {' or '.join(map(repr, tasks))}, got {task!r}")


def _check_noise(noise: Any) -> None:
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(noise)) or float(noise) <= 0:
        raise ValueError(f"option noise must be a positive finite number (σ² relative to the kernel's mean "
                         f"diagonal), got {noise!r}")


def _count_params(model: Any) -> int:
    return sum(int(np.prod(np.shape(a))) for a in jax.tree_util.tree_leaves(model.params))


def _check_kernel(options: dict, *, budget: int, model: Any = None, sequential: bool = False) -> None:
    check_positive(options, "sketch_dim", "batch_size", "eval_size")
    _check_noise(options.get("noise", DEFAULT_NOISE))
    if options.get("features") == "ntk" and model is not None and _count_params(model) > MAX_EXACT_FEATURES:
        raise ValueError(_too_big(_count_params(model)))


def _too_big(width: int) -> str:
    return (f"features='ntk' builds the exact Jacobian, {width} or more columns per example, more than "
            f"{MAX_EXACT_FEATURES}; use features='ntk_sketch' (sketch_dim=...) or 'last_layer'")


def _check_mc(options: dict, *, budget: int, model: Any = None, sequential: bool = False) -> None:
    check_parameter_samples(options, model, _DETERMINISTIC)


_DETERMINISTIC = (
    "mc_variance needs a stochastic model (MC dropout) or params_ensemble=[params, ...]; this model has no "
    "dropout (build it with dropout and adapt it with jaxal.model.from_linen(..., stochastic_kwargs={...}))"
)


# --------------------------------------------------------------------------- features and noise


def kernel_features(key: jax.Array, ctx: Context, *, features: str = "ntk_sketch", sketch_dim: int = 512,
                    batch_size: int = 256) -> tuple[jax.Array, jax.Array]:
    """``(φ(x_pool) [N, p], φ(x_labeled) [L, p])`` for the ``features`` kind (module
    docstring); the sketch of both sets uses the same directions (one key).
    ``ValueError`` when ``ctx.memory_bytes`` cannot hold the pool's features twice
    (φ and the posterior features ψ)."""
    model = ctx.model
    n = int(np.shape(ctx.x_pool)[0])
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; valid: {', '.join(FEATURES)}")
    if features == "ntk" and _count_params(model) > MAX_EXACT_FEATURES:  # P <= D·P: checked exactly below
        raise ValueError(_too_big(_count_params(model)))
    if features == "ntk_sketch":
        _check_memory(ctx, n, sketch_dim)
        fn = partial(ntk_sketch, model, key=key, sketch_dim=sketch_dim, batch_size=batch_size)
    elif features == "last_layer":
        fn = partial(last_layer_features, model, batch_size=max(batch_size, 1024))
    else:
        fn = partial(jacobian_features, model, max_features=MAX_EXACT_FEATURES, batch_size=batch_size)
    phi_pool = fn(x=ctx.x_pool)
    check_finite(f"the pool's {features} features", phi_pool)
    _check_memory(ctx, n, int(phi_pool.shape[1]))
    if int(np.shape(ctx.x_labeled)[0]) > 0:
        phi_lab = fn(x=ctx.x_labeled)
        check_finite(f"the labeled rows' {features} features", phi_lab)
    else:
        phi_lab = jax.device_put(np.zeros((0, int(phi_pool.shape[1])), np.dtype(phi_pool.dtype)))
    return phi_pool, phi_lab


def _check_memory(ctx: Context, n: int, p: int) -> None:
    need = 2 * n * p * 4
    if ctx.memory_bytes is not None and need > ctx.memory_bytes:
        raise ValueError(f"the pool's kernel features need {need} bytes ({n} rows x {p} floats, twice), more than "
                         f"memory_bytes={ctx.memory_bytes}; lower sketch_dim or raise memory_bytes")


@jax.jit
def _sum_sq(f: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(f.astype(jnp.float32)))


def absolute_noise(noise: float, phi_pool: Any, phi_labeled: Any) -> float:
    """``σ² = noise · mean ‖φ(x)‖²`` over the pool and labeled rows (``noise`` itself
    when every feature is 0)."""
    sq = float(_sum_sq(phi_pool)) + (float(_sum_sq(phi_labeled)) if np.shape(phi_labeled)[0] else 0.0)
    rows = int(np.shape(phi_pool)[0]) + int(np.shape(phi_labeled)[0])
    mean = sq / rows
    return float(noise) * (mean if mean > 0 else 1.0)


def _setup(key: jax.Array, ctx: Context, name: str, tasks: tuple[str, ...], features: str, sketch_dim: int,
           noise: float, batch_size: int) -> tuple[jax.Array, jax.Array, float, jax.Array, dict]:
    """Task and option checks, features, absolute noise, and the selector's key."""
    _require_task(ctx, name, tasks)
    _check_noise(noise)
    check_positive({"sketch_dim": sketch_dim, "batch_size": batch_size}, "sketch_dim", "batch_size")
    k_feat, k_sel = split(key)
    phi_pool, phi_lab = kernel_features(k_feat, ctx, features=features, sketch_dim=sketch_dim, batch_size=batch_size)
    sigma2 = absolute_noise(noise, phi_pool, phi_lab)
    info = {"features": features, "feature_dim": int(phi_pool.shape[1]), "noise_absolute": sigma2}
    return phi_pool, phi_lab, sigma2, k_sel, info


# --------------------------------------------------------------------------- MC variance


@partial(jax.jit, static_argnames=("mode",))
def _variance_rows(model, samples, x, chunk, mode):
    """``Σ_c Var_t f_c(x)`` of a chunk: a scan over the T samples (dropout keys folded
    with the chunk index, or stacked params), shifted by the first sample's outputs."""
    if mode == "key":
        samples = jax.vmap(jax.random.fold_in, (0, None))(samples, chunk)

    def apply(s):
        out = model.apply(s, x) if mode == "params" else model.apply(model.params, x, s)
        return out.astype(jnp.float32)

    ref = apply(jax.tree_util.tree_map(lambda v: v[0], samples))

    def step(carry, s):
        d = apply(s) - ref
        return (carry[0] + d, carry[1] + d * d), None

    (s1, s2), _ = jax.lax.scan(step, (jnp.zeros_like(ref), jnp.zeros_like(ref)), samples)
    t = jax.tree_util.tree_leaves(samples)[0].shape[0]
    mean = s1 / t
    return jnp.sum(jnp.maximum(s2 / t - mean * mean, 0.0), axis=-1)


def mc_variance_scores(model, x: Any, key: jax.Array | None = None, *, num_samples: int = 20,
                       params_ensemble: Sequence[Any] | None = None, batch_size: int = 1024) -> np.ndarray:
    """``[n]`` predictive variance summed over the outputs, ``Σ_c Var_t f_c(x; θ_t)``
    (population variance over the T passes): MC dropout with ``num_samples`` keys from
    ``key``, or one pass per member of ``params_ensemble``."""
    samples, mode = _samples(model, key, num_samples, params_ensemble)
    n = int(np.shape(x)[0])
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        xb = np.asarray(x[start : start + batch_size])
        m = xb.shape[0]
        rows = min(bucket(m), max(batch_size, m))  # padded to a bucket: a shrinking pool compiles nothing new
        xb = np.concatenate([xb, np.zeros((rows - m,) + xb.shape[1:], xb.dtype)])
        out.append(np.asarray(_variance_rows(model, samples, jax.device_put(xb), np.int32(i), mode))[:m])
    return np.concatenate(out)


@register("mc_variance", check=_check_mc, tasks=("regression",))
def mc_variance(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    num_samples: int = 20,
    params_ensemble: Sequence[Any] | None = None,
    batch_size: int = 1024,
) -> Query:
    """Top-``budget`` predictive variance across MC-dropout passes (``num_samples``
    keys; needs ``model.stochastic``) or the members of ``params_ensemble``."""
    _require_task(ctx, "mc_variance")
    check_positive({"batch_size": batch_size}, "batch_size")
    if params_ensemble is None and not ctx.model.stochastic:
        raise ValueError(_DETERMINISTIC)
    k_mc, k_tie = split(key)
    scores = mc_variance_scores(ctx.model, ctx.x_pool, k_mc, num_samples=num_samples,
                                params_ensemble=params_ensemble, batch_size=batch_size)
    check_finite("mc_variance scores", scores)
    idx = top_k_indices(scores, budget, k_tie)
    return Query(indices=idx, info={"score_mean": float(np.mean(scores)), "score_max": float(np.max(scores))})


# --------------------------------------------------------------------------- NTK Gaussian process


@register("ntk_variance", check=_check_kernel, tasks=("regression",))
def ntk_variance(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    features: Features = "ntk_sketch",
    sketch_dim: int = 512,
    noise: float = DEFAULT_NOISE,
    posterior: bool = True,
    batch_size: int = 256,
) -> Query:
    """Top-``budget`` posterior variance ``k_post(x, x)`` of the NTK Gaussian process
    (the linearised model) given the labeled rows; prior variance with ``posterior=False``."""
    phi_p, phi_l, sigma2, k_sel, info = _setup(key, ctx, "ntk_variance", ("regression",), features, sketch_dim,
                                               noise, batch_size)
    var = np.asarray(ks.posterior_variance(phi_p, phi_l if posterior else None, sigma2))
    return Query(indices=top_k_indices(var, budget, k_sel), info=info)


@register("ntk_emoc", check=_check_kernel, tasks=("regression",))
def ntk_emoc(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    features: Features = "ntk_sketch",
    sketch_dim: int = 512,
    noise: float = DEFAULT_NOISE,
    posterior: bool = True,
    eval_size: int = 512,
    batch_size: int = 256,
) -> Query:
    """Top-``budget`` expected model output change of the NTK look-ahead (squared loss,
    closed form in the module docstring), averaged over ``eval_size`` pool rows drawn
    from the key (all of them when the pool is smaller)."""
    check_positive({"eval_size": eval_size}, "eval_size")
    phi_p, phi_l, sigma2, k_sel, info = _setup(key, ctx, "ntk_emoc", ("regression",), features, sketch_dim,
                                               noise, batch_size)
    k_eval, k_tie = split(k_sel)
    n = int(phi_p.shape[0])
    rows = np.arange(n) if n <= eval_size else np.sort(host_permutation(k_eval, n)[:eval_size])
    phi_e = phi_p if n <= eval_size else jax.device_put(np.asarray(phi_p)[rows])
    scores = np.asarray(ks.expected_output_change(phi_p, phi_l if posterior else None, sigma2, features_eval=phi_e))
    return Query(indices=top_k_indices(scores, budget, k_tie), info={**info, "eval_size": int(rows.shape[0])})


# --------------------------------------------------------------------------- batch selectors


def _select(selector, name: str, key, ctx, budget, features, sketch_dim, noise, posterior, batch_size) -> Query:
    phi_p, phi_l, sigma2, k_sel, info = _setup(key, ctx, name, _TASKS, features, sketch_dim, noise, batch_size)
    idx = selector(k_sel, phi_p, phi_l, budget, noise=sigma2, posterior=posterior)
    return Query(indices=np.asarray(idx, np.int64), info=info)


@register("maxdet", check=_check_kernel, tasks=_TASKS)
def maxdet(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    features: Features = "ntk_sketch",
    sketch_dim: int = 512,
    noise: float = DEFAULT_NOISE,
    posterior: bool = True,
    batch_size: int = 256,
) -> Query:
    """Greedy max log-determinant of the batch's posterior kernel matrix plus ``σ²I``:
    repeatedly the largest posterior variance, then condition on it
    (:func:`jaxal.ops.kernel_select.maxdet`). Regression or classification."""
    return _select(ks.maxdet, "maxdet", key, ctx, budget, features, sketch_dim, noise, posterior, batch_size)


@register("maxdist", check=_check_kernel, tasks=_TASKS)
def maxdist(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    features: Features = "ntk_sketch",
    sketch_dim: int = 512,
    noise: float = DEFAULT_NOISE,
    posterior: bool = True,
    batch_size: int = 256,
) -> Query:
    """Greedy farthest point from labeled ∪ picked in the (posterior) kernel distance
    (:func:`jaxal.ops.kernel_select.maxdist`). Regression or classification."""
    return _select(ks.maxdist, "maxdist", key, ctx, budget, features, sketch_dim, noise, posterior, batch_size)


@register("kmeanspp_features", check=_check_kernel, tasks=_TASKS)
def kmeanspp_features(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    features: Features = "ntk_sketch",
    sketch_dim: int = 512,
    noise: float = DEFAULT_NOISE,
    posterior: bool = True,
    batch_size: int = 256,
) -> Query:
    """k-means++ seeding in the (posterior) kernel distance, labeled rows as fixed
    centres (:func:`jaxal.ops.kernel_select.kmeanspp`). Regression or classification."""
    return _select(ks.kmeanspp, "kmeanspp_features", key, ctx, budget, features, sketch_dim, noise, posterior,
                   batch_size)


@register("lcmd", check=_check_kernel, tasks=_TASKS)
def lcmd(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    features: Features = "ntk_sketch",
    sketch_dim: int = 512,
    noise: float = DEFAULT_NOISE,
    posterior: bool = True,
    batch_size: int = 256,
) -> Query:
    """Largest cluster maximum distance (Holzmüller et al., 2023) in the (posterior)
    kernel distance; the exact rule is :func:`jaxal.ops.kernel_select.lcmd`'s.
    Regression or classification."""
    return _select(ks.lcmd, "lcmd", key, ctx, budget, features, sketch_dim, noise, posterior, batch_size)
