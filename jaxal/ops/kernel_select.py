"""Batch selection over a kernel given by features, conditioned on the labeled set.

The kernel is ``k(x, x') = φ(x)·φ(x')`` with ``φ`` a ``p``-dimensional feature map
(sketched NTK, last-layer features, ...). Conditioning it on the labeled set ``L``
with observation noise ``σ²`` (the Gaussian-process posterior covariance) gives

    k_post(x, x') = k(x, x') − k(x, L) (K_LL + σ² I)⁻¹ k(L, x')
                  = φ(x)ᵀ (I − Φ_Lᵀ (Φ_L Φ_Lᵀ + σ² I)⁻¹ Φ_L) φ(x')
                  = σ² φ(x)ᵀ (Φ_Lᵀ Φ_L + σ² I)⁻¹ φ(x')      (push-through identity)

so it needs a ``p × p`` factorisation, never an ``L × L`` or ``N × N`` matrix. With
``A = Φ_LᵀΦ_L + σ²I = Lc Lcᵀ`` the *posterior features* ``ψ(x) = σ Lc⁻¹ φ(x)`` (a
``p × p`` map ``M = σ Lc⁻ᵀ``, ``ψ = φ M``) have ``ψ(x)·ψ(x') = k_post(x, x')``: every
selector below then runs on plain dot products of ``ψ`` (``posterior=False`` keeps
``ψ = φ``, the prior kernel). ``A`` is factored on the host in float64 (``p³``, small).

Selectors (``budget`` distinct pool indices, in pick order):

- :func:`maxdiag`: the ``budget`` largest posterior variances ``k_post(x, x)``.
- :func:`maxdet`: greedy: take the largest posterior variance, condition the kernel
  on that point observed with noise ``σ²``, repeat. As
  ``det(K_{S+x} + σ²I) = det(K_S + σ²I)·(k_S(x, x) + σ²)`` this greedily maximises
  ``log det(K_post[S, S] + σ² I)`` of the batch ``S`` (the information the batch's
  noisy labels carry about the function). Conditioning is kept as a ``p × p`` matrix
  ``C`` with ``k_S(x, x') = ψ(x)ᵀ C ψ(x')``: a step is one ``N × p`` product and a
  rank-one update ``C ← C − C ψ_c ψ_cᵀ C / (ψ_cᵀ C ψ_c + σ²)``.
- :func:`maxdist`: greedy farthest point (k-centre, :mod:`jaxal.ops.kcenter`) in the
  kernel distance ``d(x, x')² = k(x,x) + k(x',x') − 2k(x,x') = ‖ψ(x) − ψ(x')‖²`` from
  ``L ∪ S``; without labeled points the first pick is uniform.
- :func:`kmeanspp`: k-means++ seeding (D² sampling, the draw of
  :mod:`jaxal.ops.kmeanspp`) in the same distance, the labeled points being fixed
  centres: pick ``x`` with probability ``min_{z ∈ L∪S} d(x, z)² / Σ``; the first pick
  is uniform when ``L`` is empty; uniform over unpicked points when every ``D² = 0``.
- :func:`lcmd` (largest cluster maximum distance, Holzmüller et al., JMLR 2023): the
  centres are ``L ∪ S``; every pool point belongs to its nearest centre (ties: the
  earliest centre, labeled ones first in their order, then picks in pick order); a
  cluster's size is the sum of its points' squared distances to its centre; pick the
  point of the largest cluster (ties: the earliest centre) that is farthest from its
  centre. With ``L`` empty the first pick is uniform; if every cluster has size 0
  (all unpicked points sit on a centre) the pick is uniform over unpicked points.

Exact ties between points (equal variances or distances) are broken by one uniform
priority per pool point drawn from ``key`` (the larger wins), so the picks are a
function of the key. Squared distances below ``1e-5·(‖ψ_x‖² + ‖ψ_z‖²)`` are the
expansion's cancellation noise and count as 0 (as in :mod:`jaxal.ops.kmeanspp`).

:func:`expected_output_change` scores candidates by the NTK look-ahead: labelling
``x'`` with ``y' ~ N(f(x'), k_post(x',x') + σ²)`` moves the GP mean by
``Δf(x) = k_post(x, x')(y' − f(x')) / (k_post(x', x') + σ²)``, whose expected absolute
value averaged over evaluation points ``E`` is
``√(2/π) · mean_{x∈E} |k_post(x, x')| / √(k_post(x', x') + σ²)``.

Memory: the ``N × p`` features and ``O(N + p²)`` more; the nearest labeled centre is
found over ``chunk`` labeled rows at a time (``N × chunk``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxal.ops import kmeanspp as _kpp
from jaxal.ops.buckets import bucket
from jaxal.ops.kcenter import k_center_greedy
from jaxal.ops.random import host_rng
from jaxal.validation import check_budget, check_finite

__all__ = ["posterior_map", "transform", "posterior_features", "posterior_variance", "posterior_kernel",
           "nearest_centre", "maxdiag", "maxdet", "maxdist", "kmeanspp", "lcmd", "expected_output_change"]

_HI = jax.lax.Precision.HIGHEST
_REL_TOL = _kpp._REL_TOL  # squared distances below this fraction of the norms are rounding noise


# --------------------------------------------------------------------------- checks


def _dev(x: Any, dtype: Any = None) -> jax.Array:
    """On the device without compiling anything (``jnp.asarray`` compiles a copy per shape)."""
    if isinstance(x, jax.Array) and (dtype is None or x.dtype == dtype):
        return x
    a = np.asarray(x)
    return jax.device_put(a if dtype is None else a.astype(dtype))


def _features(name: str, f: Any, dtype: Any = None) -> jax.Array:
    if np.ndim(f) != 2:
        raise ValueError(f"{name} must be a [rows, p] feature matrix, got shape {np.shape(f)}")
    check_finite(name, f)
    if dtype is None and not np.issubdtype(np.dtype(getattr(f, "dtype", np.float64)), np.floating):
        dtype = np.float32
    return _dev(f, dtype)


def _pair(features_pool: Any, features_labeled: Any) -> tuple[jax.Array, jax.Array]:
    fp = _features("features_pool", features_pool)
    if features_labeled is None:
        return fp, _dev(np.zeros((0, fp.shape[1]), fp.dtype))
    fl = _features("features_labeled", features_labeled, fp.dtype)
    if fl.shape[1] != fp.shape[1]:
        raise ValueError(f"features_labeled has {fl.shape[1]} columns but features_pool has {fp.shape[1]}")
    return fp, fl


def _noise(noise: Any) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(noise)) or float(noise) <= 0:
        raise ValueError(f"noise must be a positive finite number (the observation-noise variance σ²), got {noise!r}")
    return float(noise)


# --------------------------------------------------------------------------- the posterior transformation


@jax.jit
def _gram(f: jax.Array) -> jax.Array:
    return jnp.matmul(f.T, f, precision=_HI)


@jax.jit
def _matmul(f: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.matmul(f, m.astype(f.dtype), precision=_HI)


def posterior_map(features_labeled: Any, noise: float, p: int | None = None) -> np.ndarray:
    """``M = σ Lc⁻ᵀ`` (``[p, p]`` float64) with ``Lc Lcᵀ = Φ_LᵀΦ_L + σ²I``, so that
    ``(φ M)·(φ' M) = k_post(φ, φ')``. An empty labeled set (or ``None``, then pass ``p``)
    gives the identity. A Gram matrix that rounding made indefinite beyond ``σ²`` is
    factored by its eigenvalues instead (clipped at 0): ``M = σ U diag(λ + σ²)^{-1/2}``."""
    noise = _noise(noise)
    if features_labeled is None or np.shape(features_labeled)[0] == 0:
        width = p if features_labeled is None else int(np.shape(features_labeled)[1])
        if width is None:
            raise ValueError("posterior_map needs p when there is no labeled feature matrix")
        return np.eye(int(width))
    fl = _features("features_labeled", features_labeled)
    g = np.asarray(_gram(fl), np.float64)
    a = 0.5 * (g + g.T) + noise * np.eye(g.shape[0])
    try:
        lc = np.linalg.cholesky(a)
        return math.sqrt(noise) * scipy.linalg.solve_triangular(lc, np.eye(a.shape[0]), lower=True).T
    except np.linalg.LinAlgError:
        lam, u = np.linalg.eigh(0.5 * (g + g.T))
        return math.sqrt(noise) * u / np.sqrt(np.maximum(lam, 0.0) + noise)[None, :]


def transform(features: Any, m: np.ndarray) -> jax.Array:
    """``φ M``: features mapped by :func:`posterior_map`'s matrix (one GEMM)."""
    f = _features("features", features)
    if np.array_equal(m, np.eye(m.shape[0])):
        return f
    return _matmul(f, _dev(m))


def posterior_features(features_pool: Any, features_labeled: Any, noise: float) -> tuple[jax.Array, jax.Array]:
    """``(ψ_pool, ψ_labeled)``: features whose dot products are ``k_post`` given the
    labeled rows observed with noise ``σ² = noise`` (absolute, in the kernel's units)."""
    fp, fl = _pair(features_pool, features_labeled)
    m = posterior_map(fl, noise, fp.shape[1])
    return transform(fp, m), (transform(fl, m) if fl.shape[0] else fl)


def posterior_variance(features_pool: Any, features_labeled: Any, noise: float) -> jax.Array:
    """``k_post(x, x)`` ``[N]`` for every pool row: the GP posterior variance given the
    labeled rows observed with noise ``σ²`` (``‖ψ(x)‖²``)."""
    psi, _ = posterior_features(features_pool, features_labeled, noise)
    return _sqnorms(psi)


def posterior_kernel(features_a: Any, features_b: Any, features_labeled: Any, noise: float) -> jax.Array:
    """``k_post(a_i, b_j)`` ``[na, nb]`` (a dense block: for small sets and tests)."""
    fa, fl = _pair(features_a, features_labeled)
    fb = _features("features_b", features_b)
    m = posterior_map(fl, noise, fa.shape[1])
    return _matmul(transform(fa, m), transform(_dev(fb, fa.dtype), m).T)


@jax.jit
def _sqnorms(f: jax.Array) -> jax.Array:
    return jnp.sum(f * f, axis=1)


def _kernel_features(features_pool, features_labeled, noise, posterior: bool) -> tuple[jax.Array, jax.Array]:
    fp, fl = _pair(features_pool, features_labeled)
    if not posterior:
        return fp, fl
    return posterior_features(fp, fl, _noise(noise))


def _priority(key: jax.Array, n: int) -> np.ndarray:
    """One uniform tie-break priority per pool row, drawn on the host (no program per N)."""
    return host_rng(key).random(n)


def _argmax_tie(score: jax.Array, u: jax.Array) -> jax.Array:
    """Index of the largest score; among exact ties the largest priority ``u``."""
    return jnp.argmax(jnp.where(score >= jnp.max(score), u, -1.0)).astype(jnp.int32)


# --------------------------------------------------------------------------- distances to centres


def _sqdist(psi: jax.Array, norms: jax.Array, zc: jax.Array, nz: jax.Array) -> jax.Array:
    """``‖ψ_i − z_j‖²`` for rows ``psi [N, p]`` and centres ``zc [m, p]``: ``[N, m]``,
    clamped at 0, cancellation noise zeroed."""
    d2 = norms[:, None] + nz[None, :] - 2.0 * jnp.matmul(psi, zc.T, precision=_HI)
    return jnp.where(d2 <= _REL_TOL * (norms[:, None] + nz[None, :]), 0.0, d2)


@partial(jax.jit, static_argnames=("chunk",))
def _nearest(psi, z, chunk):
    norms = jnp.sum(psi * psi, axis=1)
    m = z.shape[0]
    pad = (-m) % chunk
    zc = jnp.pad(z, ((0, pad), (0, 0))).reshape(-1, chunk, z.shape[1])
    ids = jnp.arange(m + pad, dtype=jnp.int32).reshape(-1, chunk)

    def step(carry, blk):
        best, arg = carry
        zb, ib = blk
        d2 = _sqdist(psi, norms, zb, jnp.sum(zb * zb, axis=1))
        d2 = jnp.where((ib < m)[None, :], d2, jnp.inf)
        j = jnp.argmin(d2, axis=1)  # the first of equal distances: the earliest centre
        dj = jnp.take_along_axis(d2, j[:, None], axis=1)[:, 0]
        closer = dj < best
        return (jnp.where(closer, dj, best), jnp.where(closer, ib[j], arg)), None

    init = (jnp.full(psi.shape[0], jnp.inf, psi.dtype), jnp.zeros(psi.shape[0], jnp.int32))
    (best, arg), _ = jax.lax.scan(step, init, (zc, ids))
    return best, arg


def nearest_centre(features: Any, centres: Any, *, chunk: int = 256) -> tuple[jax.Array, jax.Array]:
    """``(min_j ‖x_i − z_j‖², argmin_j)`` for every row of ``features [N, p]`` over
    ``centres [M, p]`` (``(inf, 0)`` when ``M = 0``; equal distances: the first centre)."""
    x = _features("features", features)
    z = _features("centres", centres, x.dtype)
    if z.shape[0] == 0:
        return _dev(np.full(x.shape[0], np.inf, x.dtype)), _dev(np.zeros(x.shape[0], np.int32))
    return _nearest(x, z, int(min(chunk, z.shape[0])))


# --------------------------------------------------------------------------- selectors


def maxdiag(key: jax.Array, features_pool: Any, features_labeled: Any, budget: int, *,
            noise: float | None = None, posterior: bool = True) -> np.ndarray:
    """The ``budget`` pool rows with the largest posterior variance (prior variance
    ``‖φ‖²`` with ``posterior=False``); ties by a priority drawn from ``key``."""
    psi, _ = _kernel_features(features_pool, features_labeled, noise, posterior)
    budget = check_budget(budget, int(psi.shape[0]))
    var = np.asarray(_sqnorms(psi), np.float64)
    return np.lexsort((-_priority(key, var.shape[0]), -var))[:budget].astype(np.int64)


@jax.jit
def _maxdet_loop(psi, noise, u, budget):
    n, p = psi.shape
    var0 = jnp.sum(psi * psi, axis=1)

    def body(t, carry):
        var, c_mat, chosen, picks = carry
        c = _argmax_tie(jnp.where(chosen, -jnp.inf, var), u)
        w = jnp.matmul(c_mat, psi[c], precision=_HI)  # C ψ_c
        g = jnp.matmul(psi, w, precision=_HI)  # k_S(x, c) for every x
        denom = g[c] + noise  # k_S(c, c) + σ²
        var = jnp.maximum(var - g * g / denom, 0.0)
        c_mat = c_mat - jnp.outer(w, w) / denom
        return var, c_mat, chosen.at[c].set(True), picks.at[t].set(c)

    init = (var0, jnp.eye(p, dtype=psi.dtype), jnp.zeros(n, bool), jnp.zeros(n, jnp.int32))
    return jax.lax.fori_loop(0, budget, body, init)[3]


def maxdet(key: jax.Array, features_pool: Any, features_labeled: Any, budget: int, *, noise: float,
           posterior: bool = True) -> np.ndarray:
    """Greedy max-determinant batch (module docstring): each pick is the largest
    variance given ``L`` (when ``posterior``) and the earlier picks, all observed with
    noise ``σ² = noise``. ``O(budget·(N·p + p²))`` time, ``O(N·p + p²)`` memory."""
    noise = _noise(noise)
    psi, _ = _kernel_features(features_pool, features_labeled, noise, posterior)
    budget = check_budget(budget, int(psi.shape[0]))
    u = _dev(_priority(key, psi.shape[0]), psi.dtype)
    picks = _maxdet_loop(psi, _dev(noise, psi.dtype), u, np.int32(budget))
    return np.asarray(picks)[:budget].astype(np.int64)


def maxdist(key: jax.Array, features_pool: Any, features_labeled: Any, budget: int, *,
            noise: float | None = None, posterior: bool = True) -> np.ndarray:
    """Greedy farthest point from labeled ∪ picked in the (posterior) kernel distance:
    :func:`jaxal.ops.kcenter.k_center_greedy` on ``ψ`` (float32; the first pick is
    uniform from ``key`` when there is no labeled row)."""
    psi_p, psi_l = _kernel_features(features_pool, features_labeled, noise, posterior)
    return k_center_greedy(key, psi_p, psi_l, budget).astype(np.int64)


@jax.jit
def _d2_loop(key, psi, mind2, budget):
    """k-means++ draws given initial min squared distances (``inf``: no centre yet).
    ``[N]`` int32 whose first ``budget`` entries are the picks."""
    fs, offsets = (psi,), (0.0,)
    norms = _kpp._norms(fs, offsets)
    n = psi.shape[0]

    def body(t, carry):
        key, mind2, chosen, picks = carry
        key, sub = jax.random.split(key)
        w = jnp.where(chosen, 0.0, mind2)
        w = jnp.where(jnp.isinf(w), 1.0, w)  # no centre at all (first pick, L empty): uniform
        w = jnp.where(jnp.sum(w) > 0, w, (~chosen).astype(w.dtype))  # every D² = 0: uniform over unpicked
        c = _kpp._draw(sub, w.astype(jnp.float32))
        chosen = chosen.at[c].set(True)
        d2 = _kpp._sqdist_to(fs, offsets, norms, c).astype(mind2.dtype)
        return key, jnp.where(chosen, 0.0, jnp.minimum(mind2, d2)), chosen, picks.at[t].set(c)

    init = (key, mind2, jnp.zeros(n, bool), jnp.zeros(n, jnp.int32))
    return jax.lax.fori_loop(0, budget, body, init)[3]


def kmeanspp(key: jax.Array, features_pool: Any, features_labeled: Any, budget: int, *,
             noise: float | None = None, posterior: bool = True) -> np.ndarray:
    """k-means++ seeding in the (posterior) kernel distance with the labeled rows as
    fixed centres: each pick drawn with probability ``D²(x) / ΣD²``, ``D²`` the squared
    distance to the nearest of labeled ∪ picked (module docstring). Distinct picks; a
    point at distance 0 from a centre is never drawn while any ``D² > 0``."""
    psi_p, psi_l = _kernel_features(features_pool, features_labeled, noise, posterior)
    budget = check_budget(budget, int(psi_p.shape[0]))
    psi_p = _dev(psi_p, np.float32)
    mind2, _ = nearest_centre(psi_p, _dev(psi_l, np.float32))
    return np.asarray(_d2_loop(key, psi_p, mind2, np.int32(budget)))[:budget].astype(np.int64)


@partial(jax.jit, static_argnames=("num_centres",))
def _lcmd_loop(psi, mind2, assign, n_labeled, u, budget, num_centres):
    n = psi.shape[0]
    norms = jnp.sum(psi * psi, axis=1)

    def body(t, carry):
        mind2, assign, chosen, picks = carry
        finite = jnp.where(jnp.isinf(mind2), 0.0, mind2)
        sizes = jax.ops.segment_sum(finite, assign, num_segments=num_centres)
        best = jnp.argmax(sizes)  # the first of equal sizes: the earliest centre
        far = _argmax_tie(jnp.where((assign == best) & ~chosen, mind2, -jnp.inf), u)
        free = _argmax_tie(jnp.where(chosen, -1.0, 0.0), u)  # uniform over unpicked points
        c = jnp.where(jnp.isinf(mind2).all() | (sizes[best] <= 0), free, far)
        d2 = _sqdist(psi, norms, psi[c][None, :], norms[c][None])[:, 0].at[c].set(0.0)
        closer = (d2 < mind2).at[c].set(True)  # ties keep the earlier centre
        mind2 = jnp.where(closer, d2, mind2)
        assign = jnp.where(closer, n_labeled + t, assign)
        return mind2, assign, chosen.at[c].set(True), picks.at[t].set(c)

    init = (mind2, assign, jnp.zeros(n, bool), jnp.zeros(n, jnp.int32))
    return jax.lax.fori_loop(0, budget, body, init)[3]


def lcmd(key: jax.Array, features_pool: Any, features_labeled: Any, budget: int, *,
         noise: float | None = None, posterior: bool = True) -> np.ndarray:
    """Largest cluster maximum distance (the rule in the module docstring) in the
    (posterior) kernel distance. ``O(budget·(N·p + L + budget))`` time."""
    psi_p, psi_l = _kernel_features(features_pool, features_labeled, noise, posterior)
    n, n_lab = int(psi_p.shape[0]), int(psi_l.shape[0])
    budget = check_budget(budget, n)
    mind2, assign = nearest_centre(psi_p, psi_l)
    u = _dev(_priority(key, n), psi_p.dtype)
    picks = _lcmd_loop(psi_p, mind2, assign, np.int32(n_lab), u, np.int32(budget), num_centres=n_lab + n)
    return np.asarray(picks)[:budget].astype(np.int64)


# --------------------------------------------------------------------------- look-ahead


@jax.jit
def _emoc_rows(psi_rows, psi_eval, noise):
    var = jnp.sum(psi_rows * psi_rows, axis=1)
    k = jnp.matmul(psi_rows, psi_eval.T, precision=_HI)  # k_post(x', x) [b, E]
    return math.sqrt(2.0 / math.pi) * jnp.mean(jnp.abs(k), axis=1) / jnp.sqrt(var + noise)


def expected_output_change(features_pool: Any, features_labeled: Any, noise: float, *,
                           features_eval: Any = None, batch_size: int = 4096) -> jax.Array:
    """``[N]``: ``√(2/π)·mean_{x∈E}|k_post(x, x')| / √(k_post(x', x') + σ²)`` for every
    pool row ``x'``, the expected mean absolute change of the GP mean over the
    evaluation rows ``E`` (``features_eval``; default the pool) when ``x'`` is labeled
    (module docstring). Pool rows in chunks of ``batch_size`` (memory ``batch_size·|E|``)."""
    noise = _noise(noise)
    fp, fl = _pair(features_pool, features_labeled)
    fe = fp if features_eval is None else _features("features_eval", features_eval)
    if fe.shape[1] != fp.shape[1]:
        raise ValueError(f"features_eval has {fe.shape[1]} columns but features_pool has {fp.shape[1]}")
    m = posterior_map(fl, noise, fp.shape[1])
    psi_p, psi_e = transform(fp, m), transform(_dev(fe, fp.dtype), m)
    sigma2 = _dev(noise, psi_p.dtype)
    rows = np.asarray(psi_p)
    out = []
    for start in range(0, rows.shape[0], batch_size):  # chunks padded to their bucket: few programs
        blk = rows[start : start + batch_size]
        size = min(bucket(blk.shape[0]), max(batch_size, blk.shape[0]))
        padded = np.concatenate([blk, np.zeros((size - blk.shape[0], blk.shape[1]), blk.dtype)])
        out.append(np.asarray(_emoc_rows(_dev(padded), psi_e, sigma2))[: blk.shape[0]])
    return _dev(np.concatenate(out))
