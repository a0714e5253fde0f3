"""Output maps and contractions of per-example Jacobians.

The engine differentiates ``Cd`` outputs per example: all ``C`` logits for the
``full`` and ``trace`` contractions, one scalar for ``single_logit`` (logit 0) and
``sum_logits`` (``sum_c f_c / sqrt(C)``). A per-example Jacobian leaf has shape
``[b, Cd, *leaf_shape]``; contracting two of them gives

- ``mode="full"``:  ``[b1, b2, Cd, Cd]``, ``Θ[i, j, c, d] = <J1[i, c], J2[j, d]>``;
- ``mode="trace"``: ``[b1, b2]``, ``sum_c <J1[i, c], J2[j, c]>`` (for ``Cd = 1`` the
  single entry).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

CONTRACTIONS = ("full", "trace", "single_logit", "sum_logits", "diagonal")


def output_map(contraction: str) -> tuple[Callable[[jax.Array], jax.Array], str]:
    """``(out_fn, mode)``: ``out_fn(logits [C]) -> [Cd]`` and the contraction mode."""
    if contraction in ("full", "diagonal"):
        return (lambda z: z), "full"
    if contraction == "trace":
        return (lambda z: z), "trace"
    if contraction == "single_logit":
        return (lambda z: z[:1]), "trace"
    if contraction == "sum_logits":
        return (lambda z: jnp.sum(z, keepdims=True) / jnp.sqrt(jnp.asarray(z.shape[0], z.dtype))), "trace"
    raise ValueError(f"unknown contraction {contraction!r}; valid: {', '.join(CONTRACTIONS)}")


# Accumulation. A leaf's Jacobian has ``Cd·P`` entries (23.6M for one 3x3 512->512 conv
# of ResNet-18 at C = 10), and how a backend sums that many float32 products varies:
# XLA:CPU emits a matrix-*vector* dot (a block with a single example on one side, as
# chunking makes for large models) as a loop accumulating the whole length in a few
# sequential vector lanes (1e-3 relative error on ResNet-18, trace); a reduction fused
# with the Jacobian's producer is cut into a few long sequential windows (5e-6,
# diagonal); GPUs run DEFAULT-precision float32 dots in TF32. So scalar (trace-mode)
# contractions leave no long sum to the backend: each leaf is cut into blocks of
# ``Cd·q <= _BLOCK`` products, one short reduction per block, and the block sums, then
# the leaves, are added pairwise, so rounding grows like log(Cd·P), not like Cd·P. The
# block sums take ``b1·b2·Cd·P/_BLOCK`` floats, well under one example's Jacobian. Large
# scalar blocks (``b1, b2 >= 2`` and ``b1·b2 > _GEMM_MIN_PAIRS``, where the sums would
# be slower than a GEMM) and the ``full`` mode keep one GEMM per leaf (accumulated in
# blocks by the GEMM itself), at HIGHEST precision into at least float32.
_BLOCK = 8192  # products per block sum (Cd·q)
_GEMM_MIN_PAIRS = 36  # a scalar pair block with both sides >= 2 and more pairs is a GEMM


def _flat(j: jax.Array) -> jax.Array:
    return j.reshape(j.shape[0], j.shape[1], -1)


def _acc(dtype) -> jnp.dtype:
    """Accumulation dtype: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def _tree_sum(terms: Sequence[jax.Array]) -> jax.Array:
    """Sum of same-shaped arrays as a balanced binary tree."""
    terms = list(terms)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def _tree_sum_last(s: jax.Array) -> jax.Array:
    """Pairwise sum over the last axis (halves added elementwise: XLA keeps the order)."""
    while s.shape[-1] > 1:
        m = s.shape[-1]
        h = m // 2
        top = s[..., :h] + s[..., h:2 * h]
        s = top if m == 2 * h else jnp.concatenate([top, s[..., 2 * h:]], axis=-1)
    return s[..., 0]


@functools.cache
def _block_len(p: int, cd: int) -> int:
    """``q``: the largest divisor of ``p`` with ``cd·q <= _BLOCK``, or 0 when that is
    under a 16th of the bound (``p`` with no usable divisor: the leaf is zero-padded)."""
    qmax = max(1, _BLOCK // cd)
    if p <= qmax:
        return p
    for q in range(qmax, max(1, qmax // 16) - 1, -1):
        if p % q == 0:
            return q
    return 0


def _blocks(j: jax.Array) -> jax.Array:
    """``[b, Cd, P] -> [b, Cd, n, q]`` (zero-padded to ``n·q`` only for awkward ``P``)."""
    b, cd, p = j.shape
    q = _block_len(p, cd)
    if q == 0:
        q = max(1, _BLOCK // cd)
        j = jnp.pad(j, ((0, 0), (0, 0), (0, -p % q)))
    return j.reshape(b, cd, -1, q)


def _trace_pair_blocked(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[b1, b2]`` partial sums per block (``[b1, b2, n]``), summed pairwise."""
    acc = _acc(jnp.result_type(a, b))
    # the barrier keeps XLA from sinking the reshape below the product (which would
    # materialise the product) or fusing the Jacobian's producer into the reduction
    a4, b4 = jax.lax.optimization_barrier((_blocks(a), _blocks(b)))
    prod = a4[:, None].astype(acc) * b4[None].astype(acc)  # [b1, b2, Cd, n, q] (fused)
    return _tree_sum_last(jnp.sum(prod, axis=(2, 4)))


def _trace_diag_blocked(a: jax.Array) -> jax.Array:
    acc = _acc(a.dtype)
    a4 = jax.lax.optimization_barrier(_blocks(a)).astype(acc)
    return _tree_sum_last(jnp.sum(a4 * a4, axis=(1, 3)))


def _dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    acc = _acc(jnp.result_type(a, b))
    return jnp.einsum(spec, a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=acc)


def _trace_pair_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    # the transposed (copied) operand of the GEMM is the second: make it the smaller side
    if b.shape[0] > a.shape[0]:
        return _dot("jcp,icp->ji", b, a).T
    return _dot("icp,jcp->ij", a, b)


def contract_pair(j1: Sequence[jax.Array], j2: Sequence[jax.Array], mode: str) -> jax.Array:
    """Sum over leaves of ``<J1, J2>``: ``[b1, b2, Cd, Cd]`` (full) or ``[b1, b2]`` (trace)."""
    out_dtype = jnp.result_type(*j1, *j2)
    j1, j2 = [_flat(a) for a in j1], [_flat(b) for b in j2]
    b1, cd, b2 = j1[0].shape[0], j1[0].shape[1], j2[0].shape[0]
    if mode == "full" and cd > 1:
        terms = [_dot("icp,jdp->ijcd", a, b) for a, b in zip(j1, j2)]
    elif min(b1, b2) == 1 or b1 * b2 <= _GEMM_MIN_PAIRS:  # matrix-vector, or few pairs: blocked sums
        terms = [_trace_pair_blocked(a, b) for a, b in zip(j1, j2)]
    else:
        terms = [_trace_pair_dot(a, b) for a, b in zip(j1, j2)]
    total = _tree_sum(terms)
    if mode == "full" and cd == 1:
        total = total[:, :, None, None]
    return total.astype(out_dtype)


def contract_diag(j: Sequence[jax.Array], mode: str) -> jax.Array:
    """Sum over leaves of ``<J[i], J[i]>``: ``[b, Cd, Cd]`` (full) or ``[b]`` (trace)."""
    out_dtype = jnp.result_type(*j)
    j = [_flat(a) for a in j]
    cd = j[0].shape[1]
    if mode == "full" and cd > 1:
        total = _tree_sum([_dot("icp,idp->icd", a, a) for a in j])
    else:
        total = _tree_sum([_trace_diag_blocked(a) for a in j])
        if mode == "full":
            total = total[:, None, None]
    return total.astype(out_dtype)
