"""BADGE (Ash et al., 2020): k-means++ seeding on hallucinated-label gradient embeddings.

g_x = ∂/∂θ_head CE(f(x), ŷ_x) with ŷ_x = argmax_c p_c(x). For a Dense head
(logits = h W + b, W [d, C]) this is the outer product

    g_x = (p_x − e_ŷ) ⊗ [h_x, 1]          (bias block last; ``bias=False`` drops it,
                                            as the official code does)

so the fast path keeps only the factors a = p − e_ŷ ``[N, C]`` and h ``[N, d]`` and
computes ‖g_x − g_c‖² = ‖a_x‖²‖h̃_x‖² + ‖a_c‖²‖h̃_c‖² − 2(a_x·a_c)(h̃_x·h̃_c)
(:mod:`jaxal.ops.kmeanspp`): memory O(N·(C + d)). Any other head takes the
general path: per-example ``jax.grad`` of the head parameters, vmapped in chunks, then
k-means++ on the materialised ``[N, P]`` embeddings.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxal.model import batched, embed
from jaxal.ops.kmeanspp import FIRST_CENTRES, STORAGE_DTYPES, kmeanspp, kmeanspp_factored
from jaxal.strategies.base import Context, Query, on_mesh, register
from jaxal.validation import check_choice, check_finite, check_positive

__all__ = ["badge_factors", "gradient_embedding", "badge"]


def badge_factors(model, x, *, batch_size: int = 4096) -> tuple[jax.Array, jax.Array]:
    """Factors of the Dense-head gradient embedding: ``a = p − e_ŷ [N, C]``, ``h [N, d]``."""
    h = embed(model, x, batch_size)
    check_finite("features h(x_pool)", h)
    # from the host copy of h: a short chunk is then padded to its bucket (a device array
    # is not), so the head's program is shared by every pool size in the bucket
    a = batched(lambda hb: _head_residual(model.head, model.params["head"], hb), np.asarray(h), batch_size)
    return a, h


@partial(jax.jit, static_argnames=("head",))
def _head_residual(head, params_head, h):
    # one program per head and chunk bucket, reused by every round (a jit of a fresh
    # lambda here compiled again at each query)
    return _residual(head(params_head, h))


def _residual(logits: jax.Array) -> jax.Array:
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return p - jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=p.dtype)


def _drop_bias(params_head):
    """The head params with every leaf named ``bias`` removed (``bias=False``)."""
    if isinstance(params_head, dict):
        return {k: _drop_bias(v) for k, v in params_head.items() if k != "bias"}
    return params_head


def _merge_bias(kept, full):
    if isinstance(full, dict):
        return {k: (_merge_bias(kept[k], v) if k in kept else v) for k, v in full.items()}
    return kept


@partial(jax.jit, static_argnames=("head", "bias"))
def _grad_chunk(head, params_head, h, bias):
    def one(hx):
        def loss(ph):
            full = ph if bias else _merge_bias(ph, params_head)
            logits = head(full, hx[None])[0]
            y = jax.lax.stop_gradient(jnp.argmax(logits))
            return -jax.nn.log_softmax(logits.astype(jnp.float32))[y]

        start = params_head if bias else _drop_bias(params_head)
        return ravel_pytree(jax.grad(loss)(start))[0]

    return jax.vmap(one)(h)


def gradient_embedding(model, x, *, bias: bool = True, batch_size: int = 1024) -> jax.Array:
    """Per-example gradients ``[N, P]`` of CE(f(x), argmax f(x)) w.r.t. the head params,
    flattened (``ravel_pytree`` order). ``bias=False`` leaves out every leaf named ``bias``.
    Works for any head; memory O(N·P)."""
    h = embed(model, x, batch_size)
    check_finite("features h(x_pool)", h)
    return batched(lambda hb: _grad_chunk(model.head, model.params["head"], hb, bias), h, batch_size)


def _factor_rows(model, xb: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = model.features(model.params["body"], xb)
    return _residual(model.head(model.params["head"], h)), h


def _grad_rows(model, xb: jax.Array) -> jax.Array:
    return _grad_chunk(model.head, model.params["head"], model.features(model.params["body"], xb), True)


def _grad_rows_no_bias(model, xb: jax.Array) -> jax.Array:
    return _grad_chunk(model.head, model.params["head"], model.features(model.params["body"], xb), False)


def _badge_on_mesh(key: jax.Array, ctx: Context, budget: int, use_fast: bool, *, bias: bool, first: str,
                   dtype: str | None, batch_size: int) -> Query:
    """BADGE with the pool's factors (or embeddings) cached sharded by rows over ``ctx.mesh``:
    ``N·(C + d)`` floats on the fast path, ``N·P`` on the general one."""
    if use_fast:
        f = on_mesh(ctx, _factor_rows, ctx.model, chunk_rows=batch_size, what="BADGE's factors (p - e_y, h)")
        a, h = f.data
        check_finite("features h(x_pool)", h)
        idx = kmeanspp_factored(key, a, h, budget, bias=bias, first=first, dtype=dtype, n_valid=f.n)
    else:
        g = on_mesh(ctx, _grad_rows if bias else _grad_rows_no_bias, ctx.model, chunk_rows=min(batch_size, 1024),
                    what="BADGE's gradient embeddings")
        idx = kmeanspp(key, g.data, budget, first=first, dtype=dtype, n_valid=g.n)
    return Query(indices=idx, info={"path": "factored" if use_fast else "grad", "devices": int(ctx.mesh.size)})


def _check(options: dict, *, budget: int, model: Any = None, sequential: bool = False) -> None:
    check_positive(options, "batch_size")
    check_choice("first", options.get("first", "max_norm"), FIRST_CENTRES)
    if options.get("dtype") is not None:
        check_choice("dtype", options["dtype"], STORAGE_DTYPES)
    if options.get("fast") and model is not None and not model.dense_head:
        raise ValueError("fast=True needs a Dense head (model.dense_head is False); leave fast unset")


@register("badge", check=_check)
def badge(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    bias: bool = True,
    first: str = "max_norm",
    dtype: str | None = None,
    fast: bool | None = None,
    batch_size: int = 4096,
) -> Query:
    """BADGE batch: k-means++ seeds of the pool's gradient embeddings.

    Options:
      bias: include the head-bias gradient block (``False`` = official code).
      first: first centre ``"max_norm"`` (official code) or ``"uniform"`` (thesis).
      dtype: ``"bfloat16"`` for bf16 copies of the k-means++ inputs (the factors on the
        fast path, the embeddings on the general one).
      fast: use the factored Dense-head path; default ``ctx.model.dense_head``.
    """
    use_fast = ctx.model.dense_head if fast is None else bool(fast)
    if use_fast and not ctx.model.dense_head:
        raise ValueError("fast=True needs a Dense head (model.dense_head is False)")
    if ctx.mesh is not None:
        return _badge_on_mesh(key, ctx, budget, use_fast, bias=bias, first=first, dtype=dtype, batch_size=batch_size)
    if use_fast:
        a, h = badge_factors(ctx.model, ctx.x_pool, batch_size=batch_size)
        idx = kmeanspp_factored(key, a, h, budget, bias=bias, first=first, dtype=dtype)
    else:
        g = gradient_embedding(ctx.model, ctx.x_pool, bias=bias, batch_size=min(batch_size, 1024))
        idx = kmeanspp(key, g, budget, first=first, dtype=dtype)
    return Query(indices=idx, info={"path": "factored" if use_fast else "grad"})
