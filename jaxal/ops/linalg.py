"""Stable dense linear algebra for kernel methods: jittered Cholesky, solves, block updates.

Kernel matrices built from trained networks are often numerically singular (duplicate
inputs, rank-deficient last-layer kernels, float32 round-off). :func:`stable_cholesky`
adds the smallest diagonal jitter, relative to ``mean(diag K)``, that gives a
trustworthy factor, and *reports* it so callers can record it.

Helpers for adding one point (or one block) to a solved system without refactorising:
:func:`bordered_inverse` (block inverse through the Schur complement) and
:func:`rank_one_update` (``A + s u vᵀ``), the conditioning step of a Gaussian
posterior covariance.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

Array = jax.Array

__all__ = ["Cholesky", "stable_cholesky", "cho_solve", "bordered_inverse", "rank_one_update", "symmetrize"]


class Cholesky(NamedTuple):
    """A lower Cholesky factor and the jitter that made it possible.

    Attributes:
      factor: ``[n, n]`` lower-triangular ``Lc`` with ``Lc Lcᵀ = A + jitter·I``.
      jitter: scalar, the *absolute* jitter added to the diagonal (0 when none was needed).
      relative_jitter: scalar, ``jitter / mean(diag A)``.
    """

    factor: Array
    jitter: Array
    relative_jitter: Array


def symmetrize(a: Array) -> Array:
    """``(A + Aᵀ) / 2`` over the last two axes (removes round-off asymmetry)."""
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _pivot_tolerance(dtype) -> float:
    # A squared pivot below this fraction of the mean diagonal is round-off, not signal.
    return 10.0 * float(jnp.finfo(dtype).eps)


def stable_cholesky(a: Array, *, jitter: float | None = None, max_tries: int = 10) -> Cholesky:
    """Cholesky of a symmetric PSD ``[n, n]`` matrix with the smallest sufficient jitter.

    Tries ``jitter = 0`` first, then ``10·eps·mean(diag A)·10^k`` for ``k = 0, 1, ...``
    until the factor is finite and every squared pivot exceeds ``10·eps·mean(diag A)``
    (a pivot below that is round-off: the matrix is numerically singular there).
    Jit-compatible (a ``lax.while_loop``).

    Args:
      a: ``[n, n]`` symmetric positive semi-definite matrix.
      jitter: a fixed *relative* jitter (fraction of ``mean(diag A)``) to use instead
        of the search.
      max_tries: number of jitter levels tried after ``0``; the last one is used even
        if it fails the pivot test.

    Returns:
      A :class:`Cholesky` with the factor and the jitter used.
    """
    a = jnp.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"a must be a square matrix, got shape {a.shape}")
    if jitter is not None and jitter < 0:
        raise ValueError(f"jitter must be non-negative, got {jitter}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    n = a.shape[0]
    if n == 0:
        zero = jnp.zeros((), a.dtype)
        return Cholesky(a, zero, zero)
    a = symmetrize(a)
    scale = jnp.maximum(jnp.mean(jnp.diag(a)), jnp.finfo(a.dtype).tiny)
    tol = _pivot_tolerance(a.dtype)
    eye = jnp.eye(n, dtype=a.dtype)

    def factor(rel):
        return jnp.linalg.cholesky(a + (rel * scale) * eye)

    def good(lc):
        piv = jnp.diag(lc)
        return jnp.all(jnp.isfinite(lc)) & (jnp.min(piv * piv) > tol * scale)

    if jitter is not None:
        rel = jnp.asarray(jitter, a.dtype)
        lc = factor(rel)
        return Cholesky(lc, rel * scale, rel)

    def level(k):
        return jnp.where(k == 0, 0.0, tol * 10.0 ** (k - 1)).astype(a.dtype)

    # The factorisation appears once, in the loop body (k = -1: nothing tried yet), so
    # XLA compiles one Cholesky, not two (an initial factor outside the loop doubled it).
    def cond(carry):
        k, lc = carry
        return (k < 0) | ((k < max_tries) & ~good(lc))

    def body(carry):
        k, _ = carry
        return k + 1, factor(level(k + 1))

    k, lc = jax.lax.while_loop(cond, body, (jnp.asarray(-1), jnp.full_like(a, jnp.nan)))
    rel = level(k)
    return Cholesky(lc, rel * scale, rel)


def cho_solve(chol: Cholesky | Array, b: Array) -> Array:
    """``(Lc Lcᵀ)⁻¹ b`` for ``b`` of shape ``[n]`` or ``[n, k]``, by two triangular solves."""
    lc = chol.factor if isinstance(chol, Cholesky) else chol
    z = solve_triangular(lc, b, lower=True)
    return solve_triangular(lc, z, lower=True, trans="T")


def bordered_inverse(a_inv: Array, b: Array, c: Array) -> Array:
    """Inverse of the bordered matrix ``[[A, B], [Bᵀ, C]]`` from ``A⁻¹`` (block inverse).

    With ``V = A⁻¹ B`` and the Schur complement ``S = C − Bᵀ V``::

        [[A⁻¹ + V S⁻¹ Vᵀ, −V S⁻¹], [−S⁻¹ Vᵀ, S⁻¹]]

    Args:
      a_inv: ``[n, n]`` inverse of the symmetric block ``A``.
      b: ``[n, k]`` (or ``[n]`` for one new point) off-diagonal block.
      c: ``[k, k]`` (or scalar) new diagonal block.

    Returns:
      ``[n + k, n + k]`` inverse.
    """
    b = jnp.asarray(b)
    if b.ndim == 1:
        b = b[:, None]
    c = jnp.atleast_2d(jnp.asarray(c))
    if a_inv.shape[0] != b.shape[0] or c.shape != (b.shape[1], b.shape[1]):
        raise ValueError(f"shapes do not border: a_inv {a_inv.shape}, b {b.shape}, c {c.shape}")
    v = a_inv @ b
    s_inv = jnp.linalg.inv(c - b.T @ v)
    top_left = a_inv + v @ s_inv @ v.T
    top_right = -v @ s_inv
    return jnp.block([[top_left, top_right], [top_right.T, s_inv]])


def rank_one_update(a: Array, u: Array, v: Array, scale: Array | float = 1.0) -> Array:
    """``A + scale · u vᵀ`` for ``A [n, m]``, ``u [n]``, ``v [m]``.

    With ``u = v = Σ[:, i]`` and ``scale = −1/Σ[i, i]`` this conditions a Gaussian
    covariance on an exact observation of coordinate ``i``.
    """
    return a + scale * jnp.outer(u, v)
