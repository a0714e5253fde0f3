"""Spectra of many bordered Gram matrices, their numerical ranks, and CRC's scores.

CRC (:mod:`jaxal.strategies.crc`) scores a group ``g`` of candidates by an eigenvalue
at the bottom of the significant spectrum of a PSD kernel Gram matrix over ``L ∪ g``
(the labeled set plus the group). This module holds the numerical part, independent of
models. Every eigenproblem is solved on the host in float64 (``numpy.linalg.eigvalsh``,
eigenvalues only, no compile step per shape), in memory-bounded stacks, with the host
BLAS held to one thread: these matrices are small (tens to a few hundred rows), and a
multi-threaded BLAS spinning against XLA's threads or another process on a busy machine
made the same query several times slower from one run to the next (measured: 0.13 s
single-threaded vs 0.27–0.46 s with two threads next to one busy process):

- :func:`bordered_spectra`: the primal side. ``K_LL`` is shared by every group; each
  group's ``(|L|+G)×(|L|+G)`` matrix ``[[K_LL, K_Lg], [K_gL, K_gg]]`` is assembled and
  diagonalised.
- :func:`dual_spectra`: the dual side of a kernel ``K = s·ΦΦᵀ`` with explicit features
  ``Φ`` ``[n, p]``: the nonzero spectrum of ``s·ΦΦᵀ`` equals that of the ``p×p``
  matrix ``s·ΦᵀΦ = s·(Φ_LᵀΦ_L + Φ_gᵀΦ_g)``, so each group costs a rank-``G`` update
  and a ``p×p`` eigenproblem instead of an ``(|L|+G)``-sized one.

Zero rule. In a matrix's ascending spectrum, eigenvalues ``λ ≤ rtol·λ_max`` are
numerically zero; the others are significant and their count is the matrix's numerical
rank (:func:`ranks`). Two defaults for ``rtol``, by where the rounding comes from:

- :func:`feature_rtol` ``= eps²·max(n, p)`` when the Gram is formed in float64 from
  features ``Φ`` computed in a dtype with machine epsilon ``eps``: rounding errors of
  relative size ``eps`` in the entries of ``Φ`` move its singular values by about
  ``eps·sqrt(max(n, p))·σ_max`` (the "expected round-off" threshold, not the
  worst-case ``eps·max(n, p)`` of ``numpy.linalg.matrix_rank``), and the Gram's
  eigenvalues are the squared singular values; never below the float64 Gram's own
  rounding, ``eps₆₄·max(n, p)``. A trained network's float32 features have real
  eigenvalues far below a float32 Gram's ``eps·n`` (they match a float64 forward pass
  to ~1e-3 relative down to ``~1e-12·λ_max``), and exact duplicates still fall below
  this threshold.
- :func:`default_rtol` ``= eps·max(n, p)`` when the Gram itself was formed in that
  dtype (e.g. an NTK Gram computed in float32): its entries carry that relative error.

Scores (:func:`scores_from_spectra`):

- ``"generic"`` (CRC's default): every group is scored by its ``k``-th largest
  eigenvalue (0 when not significant) with one ``k`` for all groups, chosen from the
  per-group ranks by :func:`shared_rank`: the largest rank that at least
  ``num_selected`` groups reach. A group that loses rank compared with the others (a
  duplicate point, a point already labeled) then scores 0 — Proposition 2 of Kong et
  al., which applies while ``|L|+G`` does not exceed the features' rank; once the
  labeled set spans the significant feature space every group reaches the same rank
  and is scored by its smallest significant eigenvalue.
- ``"positive"``: each group's smallest significant eigenvalue (its own rank). This is
  the rate of gradient descent on the range of ``K``; a degenerate group is not
  penalised by it.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

__all__ = [
    "host_eigvalsh",
    "default_rtol",
    "feature_rtol",
    "lambda_plus_min",
    "numerical_rank",
    "ranks",
    "shared_rank",
    "kth_largest",
    "scores_from_spectra",
    "bordered_spectra",
    "dual_spectra",
    "bordered_scores",
    "dual_scores",
]

DEFAULT_MEMORY_BYTES = 256 * 2**20
SPECTRA = ("generic", "positive")


def default_rtol(dtype: Any, *sizes: int) -> float:
    """``eps(dtype)·max(sizes)``: the zero rule of a Gram matrix formed in ``dtype``."""
    return float(jnp.finfo(dtype).eps) * max(1, *(int(s) for s in sizes))


def feature_rtol(dtype: Any, n: int, p: int) -> float:
    """``max(eps(dtype)²·max(n, p), eps(float64)·max(n, p))``: the zero rule of a float64
    Gram of ``n`` feature vectors of size ``p`` computed in ``dtype``."""
    m = max(1, int(n), int(p))
    return max(float(jnp.finfo(dtype).eps) ** 2 * m, float(np.finfo(np.float64).eps) * m)


def lambda_plus_min(eigs: Any, rtol: float, rank: int | None = None) -> Any:
    """λ⁺_min of ascending spectra ``eigs [..., m]`` -> ``[...]`` (numpy or jax).

    Args:
      eigs: eigenvalues sorted ascending along the last axis (``eigvalsh`` order).
      rtol: eigenvalues ``≤ rtol·λ_max`` are zero.
      rank: ``None`` for the smallest eigenvalue above the threshold; an int ``k``
        (``1 ≤ k ≤ m``) for the ``k``-th largest eigenvalue, set to 0 when below the
        threshold. Returns 0 where no eigenvalue is positive.
    """
    xp = np if isinstance(eigs, np.ndarray) else jnp
    m = eigs.shape[-1]
    if m == 0:
        return xp.zeros(eigs.shape[:-1], eigs.dtype)
    thr = rtol * xp.maximum(eigs[..., -1], 0.0)[..., None]
    if rank is None:
        pos = eigs > thr
        smallest = xp.min(xp.where(pos, eigs, xp.inf), axis=-1)
        return xp.where(xp.any(pos, axis=-1), smallest, 0.0).astype(eigs.dtype)
    if not 1 <= rank <= m:
        raise ValueError(f"rank must be in [1, {m}], got {rank}")
    v = eigs[..., m - rank]
    return xp.where(v > thr[..., 0], v, 0.0).astype(eigs.dtype)


def numerical_rank(gram: Any, rtol: float) -> int:
    """Number of eigenvalues of the PSD ``gram [m, m]`` above ``rtol·λ_max``."""
    return int(ranks(host_eigvalsh(np.asarray(gram, dtype=np.float64))[None], rtol)[0])


def ranks(spectra: np.ndarray, rtol: float) -> np.ndarray:
    """Numerical rank of each ascending spectrum ``[B, m]`` -> int ``[B]``."""
    spectra = np.asarray(spectra)
    if spectra.shape[-1] == 0:
        return np.zeros(spectra.shape[:-1], np.int64)
    thr = rtol * np.maximum(spectra[..., -1:], 0.0)
    return np.sum((spectra > thr) & (spectra > 0), axis=-1).astype(np.int64)


def shared_rank(group_ranks: Any, num_selected: int = 1) -> int:
    """The largest rank reached by at least ``num_selected`` groups (the
    ``num_selected``-th largest of ``group_ranks``; capped at the number of groups).

    With ``num_selected`` equal to the number of groups the caller keeps, every kept
    group is compared on a significant eigenvalue, and one group that pushes a single
    near-threshold eigenvalue past the tolerance cannot zero all the others.
    """
    r = np.sort(np.asarray(group_ranks, np.int64).ravel())[::-1]
    if r.size == 0:
        raise ValueError("group_ranks is empty")
    return int(r[min(max(1, int(num_selected)), r.size) - 1])


def kth_largest(spectra: np.ndarray, k: int, rtol: float) -> np.ndarray:
    """``k``-th largest eigenvalue of each ascending spectrum ``[B, m]``, 0 where it is
    not significant (or ``k = 0``)."""
    spectra = np.asarray(spectra, np.float64)
    if k <= 0:
        return np.zeros(spectra.shape[:-1], np.float64)
    return np.asarray(lambda_plus_min(spectra, rtol, int(k)), np.float64)


def scores_from_spectra(
    spectra: np.ndarray, rtol: float, spectrum: str = "generic", num_selected: int = 1
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """CRC scores of ascending spectra ``[B, m]``.

    Returns ``(scores [B], ranks [B], k)``: ``"generic"`` scores by the ``k``-th
    largest eigenvalue with ``k = shared_rank(ranks, num_selected)``; ``"positive"``
    by each spectrum's smallest significant eigenvalue (``k`` is ``None``).
    """
    if spectrum not in SPECTRA:
        raise ValueError(f"spectrum must be one of {SPECTRA}, got {spectrum!r}")
    spectra = np.asarray(spectra, np.float64)
    r = ranks(spectra, rtol)
    if spectrum == "positive":
        return np.asarray(lambda_plus_min(spectra, rtol, None), np.float64), r, None
    k = shared_rank(r, num_selected)
    return kth_largest(spectra, k, rtol), r, k


def host_eigvalsh(mats: np.ndarray) -> np.ndarray:
    """``numpy.linalg.eigvalsh`` with the BLAS on one thread (see the module docstring)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return np.linalg.eigvalsh(mats)


def _chunk(m: int, memory_bytes: int | None) -> int:
    """Float64 ``m×m`` matrices per stack under a memory bound (~4 copies each)."""
    budget = DEFAULT_MEMORY_BYTES if memory_bytes is None else int(memory_bytes)
    return max(1, budget // max(1, 4 * m * m * 8))


def bordered_spectra(k_ll: Any, k_lg: Any, k_gg: Any, *, memory_bytes: int | None = None) -> np.ndarray:
    """Ascending float64 spectra ``[B, |L|+G]`` of every ``[[K_LL, K_Lg], [K_gL, K_gg]]``.

    Args:
      k_ll: ``[L, L]`` kernel of the labeled set, shared by all groups.
      k_lg: ``[B, L, G]`` kernel between the labeled set and each group.
      k_gg: ``[B, G, G]`` kernel within each group.
      memory_bytes: bound on the working memory of one stack of matrices.
    """
    k_ll = np.asarray(k_ll, np.float64)
    k_lg, k_gg = np.asarray(k_lg, np.float64), np.asarray(k_gg, np.float64)
    num, n_l, g = k_lg.shape
    m = n_l + g
    out = np.empty((num, m), np.float64)
    step = _chunk(m, memory_bytes)
    for s in range(0, num, step):
        e = min(num, s + step)
        mats = np.empty((e - s, m, m), np.float64)
        mats[:, :n_l, :n_l] = k_ll
        mats[:, :n_l, n_l:] = k_lg[s:e]
        mats[:, n_l:, :n_l] = np.swapaxes(k_lg[s:e], 1, 2)
        mats[:, n_l:, n_l:] = k_gg[s:e]
        out[s:e] = host_eigvalsh(mats)
    return out


def dual_spectra(a_l: Any, phi_g: Any, *, scale: float = 1.0, memory_bytes: int | None = None) -> np.ndarray:
    """Ascending float64 spectra ``[B, p]`` of ``scale·(Φ_LᵀΦ_L + Φ_gᵀΦ_g)`` per group.

    Args:
      a_l: ``[p, p]`` ``Φ_LᵀΦ_L``, computed once.
      phi_g: ``[B, G, p]`` features of each group.
      scale: the kernel's scalar factor (``C`` for the trace of a dense head's NTK).
      memory_bytes: bound on the working memory of one stack of matrices.
    """
    a_l, phi_g = np.asarray(a_l, np.float64), np.asarray(phi_g, np.float64)
    num, _, p = phi_g.shape
    out = np.empty((num, p), np.float64)
    step = _chunk(p, memory_bytes)
    for s in range(0, num, step):
        e = min(num, s + step)
        mats = np.matmul(np.swapaxes(phi_g[s:e], 1, 2), phi_g[s:e])
        mats += a_l
        out[s:e] = host_eigvalsh(mats)
    return float(scale) * out


def bordered_scores(k_ll, k_lg, k_gg, *, rtol: float, rank: int | None = None,
                    memory_bytes: int | None = None) -> np.ndarray:
    """Primal λ⁺_min (:func:`lambda_plus_min` rule) of every bordered Gram -> ``[B]``."""
    return np.asarray(lambda_plus_min(bordered_spectra(k_ll, k_lg, k_gg, memory_bytes=memory_bytes), rtol, rank))


def dual_scores(a_l, phi_g, *, scale: float = 1.0, rtol: float, rank: int | None = None,
                memory_bytes: int | None = None) -> np.ndarray:
    """Dual λ⁺_min (:func:`lambda_plus_min` rule) for ``K = scale·ΦΦᵀ`` over ``L ∪ g`` -> ``[B]``."""
    return np.asarray(lambda_plus_min(dual_spectra(a_l, phi_g, scale=scale, memory_bytes=memory_bytes), rtol, rank))
