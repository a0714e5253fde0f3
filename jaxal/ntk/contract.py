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


def _flat(j: jax.Array) -> jax.Array:
    return j.reshape(j.shape[0], j.shape[1], -1)


def contract_pair(j1: Sequence[jax.Array], j2: Sequence[jax.Array], mode: str) -> jax.Array:
    """Sum over leaves of ``<J1, J2>``: ``[b1, b2, Cd, Cd]`` (full) or ``[b1, b2]`` (trace)."""
    spec = "icp,jdp->ijcd" if mode == "full" else "icp,jcp->ij"
    terms = [jnp.einsum(spec, _flat(a), _flat(b)) for a, b in zip(j1, j2)]
    return sum(terms[1:], terms[0])


def contract_diag(j: Sequence[jax.Array], mode: str) -> jax.Array:
    """Sum over leaves of ``<J[i], J[i]>``: ``[b, Cd, Cd]`` (full) or ``[b]`` (trace)."""
    spec = "icp,idp->icd" if mode == "full" else "icp,icp->i"
    terms = [jnp.einsum(spec, _flat(a), _flat(a)) for a in j]
    return sum(terms[1:], terms[0])
