"""Smallest positive eigenvalues of many bordered Gram matrices, batched.

CRC (:mod:`jaxal.strategies.crc`) scores a group ``g`` of candidates by the smallest
positive eigenvalue λ⁺_min of a PSD kernel Gram matrix over ``L ∪ g`` (the labeled set
plus the group). This module holds the numerical part, independent of models:

- :func:`lambda_plus_min`: λ⁺_min from an ascending spectrum, under one of two rules
  for what counts as "zero" (see below).
- :func:`bordered_scores`: the primal side. ``K_LL`` is shared by every group; each
  group's ``(|L|+G)×(|L|+G)`` matrix ``[[K_LL, K_Lg], [K_gL, K_gg]]`` is assembled by
  concatenation and all groups go through one vmapped ``eigvalsh`` (in memory-bounded
  batches via ``lax.map``).
- :func:`dual_scores`: the dual side of a kernel ``K = s·ΦΦᵀ`` with explicit features
  ``Φ`` ``[n, p]``: the nonzero spectrum of ``s·ΦΦᵀ`` equals that of the ``p×p``
  matrix ``s·ΦᵀΦ = s·(Φ_LᵀΦ_L + Φ_gᵀΦ_g)``, so each group costs a rank-``G`` update
  and a ``p×p`` eigenproblem instead of an ``(|L|+G)``-sized one.

Zero rule. Eigenvalues ``λ ≤ rtol·λ_max`` read as exactly 0, with the default
``rtol = eps(dtype)·max(n, p)`` (``n = |L|+G`` points, ``p`` features; the rule of
``numpy.linalg.matrix_rank``), the size of the rounding error of a Gram matrix formed
and diagonalised in that dtype. The same ``rtol`` is used on both sides, so primal and
dual agree. Two definitions of λ⁺_min are offered:

- ``rank=k`` ("generic", CRC's default): the ``k``-th largest eigenvalue, where ``k``
  is the rank a group in general position reaches (``min(n, p_eff)``). The ``n − k``
  eigenvalues that are zero for *every* group (more points than features) are skipped
  by counting, not by a threshold; a group that loses rank (a duplicate point, a point
  already labeled) scores 0 — Proposition 2 of Kong et al.
- ``rank=None`` ("positive"): the smallest eigenvalue above the threshold (0 if
  none). This is the rate of gradient descent on the range of ``K``; a degenerate group
  is not penalised by it.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["default_rtol", "lambda_plus_min", "numerical_rank", "bordered_scores", "dual_scores"]

DEFAULT_MEMORY_BYTES = 256 * 2**20


def default_rtol(dtype, *sizes: int) -> float:
    """``eps(dtype) · max(sizes)``: eigenvalues ``≤ rtol·λ_max`` count as zero."""
    return float(jnp.finfo(dtype).eps) * max(1, *(int(s) for s in sizes))


def lambda_plus_min(eigs: Array, rtol: float, rank: int | None = None) -> Array:
    """λ⁺_min of ascending spectra ``eigs [..., m]`` -> ``[...]``.

    Args:
      eigs: eigenvalues sorted ascending along the last axis (``eigvalsh`` order).
      rtol: eigenvalues ``≤ rtol·λ_max`` are zero.
      rank: ``None`` for the smallest eigenvalue above the threshold; an int ``k``
        (``1 ≤ k ≤ m``) for the ``k``-th largest eigenvalue, set to 0 when below the
        threshold. Returns 0 where no eigenvalue is positive.
    """
    m = eigs.shape[-1]
    if m == 0:
        return jnp.zeros(eigs.shape[:-1], eigs.dtype)
    thr = rtol * jnp.maximum(eigs[..., -1], 0.0)[..., None]
    if rank is None:
        pos = eigs > thr
        smallest = jnp.min(jnp.where(pos, eigs, jnp.inf), axis=-1)
        return jnp.where(jnp.any(pos, axis=-1), smallest, 0.0).astype(eigs.dtype)
    if not 1 <= rank <= m:
        raise ValueError(f"rank must be in [1, {m}], got {rank}")
    v = eigs[..., m - rank]
    return jnp.where(v > thr[..., 0], v, 0.0).astype(eigs.dtype)


def numerical_rank(gram: Array, rtol: float) -> int:
    """Number of eigenvalues of the PSD ``gram [m, m]`` above ``rtol·λ_max``."""
    e = np.linalg.eigvalsh(np.asarray(gram, dtype=np.float64))
    if e.size == 0 or e[-1] <= 0:
        return 0
    return int(np.sum(e > rtol * e[-1]))


def _batch_for(m: int, itemsize: int, memory_bytes: int | None) -> int:
    """Matrices of size ``m×m`` per vmapped batch under a memory bound (~4 copies each)."""
    budget = DEFAULT_MEMORY_BYTES if memory_bytes is None else int(memory_bytes)
    return max(1, budget // max(1, 4 * m * m * itemsize))


@partial(jax.jit, static_argnames=("rtol", "rank", "batch_size"))
def _bordered(k_ll, k_lg, k_gg, rtol, rank, batch_size):
    def one(blocks):
        lg, gg = blocks
        top = jnp.concatenate([k_ll, lg], axis=1)
        bottom = jnp.concatenate([lg.T, gg], axis=1)
        return lambda_plus_min(jnp.linalg.eigvalsh(jnp.concatenate([top, bottom], axis=0)), rtol, rank)

    return jax.lax.map(one, (k_lg, k_gg), batch_size=batch_size)


def bordered_scores(
    k_ll: Array,
    k_lg: Array,
    k_gg: Array,
    *,
    rtol: float,
    rank: int | None = None,
    memory_bytes: int | None = None,
) -> Array:
    """Primal λ⁺_min of every bordered Gram matrix ``[[K_LL, K_Lg], [K_gL, K_gg]]``.

    Args:
      k_ll: ``[L, L]`` kernel of the labeled set, shared by all groups.
      k_lg: ``[B, L, G]`` kernel between the labeled set and each group.
      k_gg: ``[B, G, G]`` kernel within each group.
      rtol, rank: the zero rule (:func:`lambda_plus_min`).
      memory_bytes: bound on the working memory of one vmapped batch of matrices.

    Returns:
      ``[B]`` scores.
    """
    k_ll, k_lg, k_gg = jnp.asarray(k_ll), jnp.asarray(k_lg), jnp.asarray(k_gg)
    m = k_ll.shape[0] + k_gg.shape[-1]
    batch = _batch_for(m, k_gg.dtype.itemsize, memory_bytes)
    return _bordered(k_ll, k_lg, k_gg, float(rtol), rank, min(batch, k_gg.shape[0]))


@partial(jax.jit, static_argnames=("rtol", "rank", "batch_size"))
def _dual(a_l, phi_g, scale, rtol, rank, batch_size):
    def one(pg):
        return lambda_plus_min(jnp.linalg.eigvalsh(scale * (a_l + pg.T @ pg)), rtol, rank)

    return jax.lax.map(one, phi_g, batch_size=batch_size)


def dual_scores(
    a_l: Array,
    phi_g: Array,
    *,
    scale: float = 1.0,
    rtol: float,
    rank: int | None = None,
    memory_bytes: int | None = None,
) -> Array:
    """Dual λ⁺_min for a feature kernel ``K = scale·ΦΦᵀ`` over ``L ∪ g``.

    The nonzero eigenvalues of ``scale·ΦΦᵀ`` (``n×n``) and ``scale·ΦᵀΦ`` (``p×p``)
    coincide, so each group's score is read from ``scale·(Φ_LᵀΦ_L + Φ_gᵀΦ_g)``.

    Args:
      a_l: ``[p, p]`` ``Φ_LᵀΦ_L``, computed once.
      phi_g: ``[B, G, p]`` features of each group.
      scale: the kernel's scalar factor (``C`` for the trace of a dense head's NTK).
      rtol, rank: the zero rule (:func:`lambda_plus_min`); ``rank`` must be ``≤ p``.
      memory_bytes: bound on the working memory of one vmapped batch.

    Returns:
      ``[B]`` scores.
    """
    a_l, phi_g = jnp.asarray(a_l), jnp.asarray(phi_g)
    p = a_l.shape[0]
    batch = _batch_for(p, phi_g.dtype.itemsize, memory_bytes)
    return _dual(a_l, phi_g, jnp.asarray(scale, phi_g.dtype), float(rtol), rank, min(batch, phi_g.shape[0]))
