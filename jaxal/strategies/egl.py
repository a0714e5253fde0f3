"""Expected gradient length (Settles, Craven & Ray, 2008), on the head parameters:

    EGL(x) = E_{y ~ p(·|x)} ‖∇_θhead CE(f(x), y)‖².

With J = ∂logits/∂θ_head ``[C, P]`` and K = J Jᵀ (the head NTK at x, ``[C, C]``), the
gradient for label y is Jᵀ(p − e_y), so EGL(x) = Σ_y p_y (p − e_y)ᵀ K (p − e_y): the general
path builds K per example with ``jax.jacrev`` (vmapped, chunked). For a Dense head
K = (‖h‖² + 1) I and Σ_y p_y ‖p − e_y‖² = 1 − ‖p‖², so

    EGL(x) = (1 − ‖p‖²)(‖h‖² + 1)            (closed form, no gradients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.model import batched, embed
from jaxal.strategies.base import Context, positive_options, register, top_k_indices, top_k_on_mesh

__all__ = ["egl_scores", "egl"]


@jax.jit
def _closed_form(model, h):
    p = jax.nn.softmax(model.head(model.params["head"], h).astype(jnp.float32), axis=-1)
    return (1.0 - jnp.sum(p * p, axis=-1)) * (jnp.sum(h * h, axis=-1) + 1.0)


@jax.jit
def _general(model, h):
    def one(hx):
        f = lambda ph: model.head(ph, hx[None])[0].astype(jnp.float32)  # noqa: E731
        logits = f(model.params["head"])
        jac = jax.jacrev(f)(model.params["head"])  # leaves [C, *leaf]
        k = sum(jnp.einsum("c...,e...->ce", j, j) for j in jax.tree_util.tree_leaves(jac))
        p = jax.nn.softmax(logits)
        r = p[None, :] - jnp.eye(p.shape[0], dtype=p.dtype)  # row y: p − e_y
        return jnp.sum(p * jnp.einsum("yc,ce,ye->y", r, k, r))

    return jax.vmap(one)(h)


def _rows_closed_form(model, xb: jax.Array) -> jax.Array:
    return _closed_form(model, model.features(model.params["body"], xb))


def _rows_general(model, xb: jax.Array) -> jax.Array:
    return _general(model, model.features(model.params["body"], xb))


def egl_scores(model, x, *, fast: bool | None = None, batch_size: int = 1024) -> jax.Array:
    """EGL scores ``[n]``; ``fast`` (default ``model.dense_head``) uses the closed form."""
    use_fast = model.dense_head if fast is None else bool(fast)
    if use_fast and not model.dense_head:
        raise ValueError("fast=True needs a Dense head (model.dense_head is False)")
    h = embed(model, x, batch_size)
    fn = _closed_form if use_fast else _general
    return batched(lambda hb: fn(model, hb), h, batch_size)


@register("egl", check=positive_options("batch_size"))
def egl(key: jax.Array, ctx: Context, budget: int, *, fast: bool | None = None, batch_size: int = 1024) -> np.ndarray:
    """Top-``budget`` pool points by expected squared gradient norm of the head."""
    if ctx.mesh is not None:
        use_fast = ctx.model.dense_head if fast is None else bool(fast)
        if use_fast and not ctx.model.dense_head:
            raise ValueError("fast=True needs a Dense head (model.dense_head is False)")
        return top_k_on_mesh(key, ctx, budget, _rows_closed_form if use_fast else _rows_general, ctx.model,
                             chunk_rows=batch_size)
    return top_k_indices(egl_scores(ctx.model, ctx.x_pool, fast=fast, batch_size=batch_size), budget, key)
