"""Sketched NTK features: a random projection of the Jacobian, built from JVPs.

The empirical NTK is ``Θ(x, x') = J(x) J(x')ᵀ`` with ``J = ∂f/∂θ`` (``[D, P]`` per
example: D outputs, P parameters). Storing ``J`` for a pool costs ``N·D·P`` floats;
a *sketch* keeps ``k`` random directions of parameter space instead. With
``V = [v_1 … v_k]`` a ``[P, k]`` matrix of independent standard Gaussians,

    φ(x) = J(x) V / √k,      E_V[φ(x) φ(x')ᵀ] = J(x) E[V Vᵀ] J(x')ᵀ / k = Θ(x, x'),

so the dot products of the sketched features are an unbiased estimate of the NTK,
with an entry-wise variance ``(Θ(x,x)Θ(x',x') + Θ(x,x')²) / k`` for one output (relative Frobenius
error about ``√(2/k)`` on the correlated kernels of trained networks). Column ``j``
is one Jacobian-vector product ``J(x) v_j``: ``V`` is never stored whole, each
``v_j`` is drawn from ``fold_in(key, j)`` when it is needed (a block of tangents at a
time, ``vmap``-ed over one forward pass per block, one compiled program for every
block and every ``k``), and the pool is processed in row chunks. Because ``v_j``
depends on ``j`` only, the first ``m`` columns of a ``k``-sketch, times ``√(k/m)``,
are exactly the ``m``-sketch from the same key.

Several outputs (``D > 1``):

- ``outputs="trace"`` (default): ``φ_j(x) = s_jᵀ J(x) v_j / √k`` with ``s_j ∈ {±1}^D``
  random signs (the JVP of ``Σ_c s_jc f_c``). As ``E[s_jc s_jd] = δ_cd``, the expected
  kernel is the **trace** NTK ``Σ_c Θ_cc(x, x')`` (``jaxal.ntk.kernel``'s
  ``contraction="trace"``), with ``k`` columns whatever ``D``; for ``D = 1`` the signs
  square away and this is the plain sketch above.
- ``outputs="full"``: ``[n, D, k]``, ``φ_c(x) = J_c(x) V / √k`` with one ``V`` for all
  outputs, so ``E[φ_c(x)·φ_d(x')] = Θ_cd(x, x')`` (the full ``[D, D]`` kernel).

Also here: :func:`last_layer_features` (the cheap base kernel ``h·h' + 1`` of a Dense
head), :func:`jacobian_features` (the exact Jacobian, flattened, for small P), and
:func:`sketch_error` (relative Frobenius error of the sketch against the exact kernel
of :func:`jaxal.ntk.kernel.kernel`, for benchmarks).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.model import Model, batched, embed
from jaxal.ops.buckets import bucket
from jaxal.ntk.engine import merge_leaves
from jaxal.ntk.kernel import head_features, kernel
from jaxal.ntk.params import Subset, split_params
from jaxal.validation import check_choice, check_nonempty

__all__ = ["ntk_sketch", "last_layer_features", "jacobian_features", "jacobian_size", "sketch_error",
           "sketch_relative_error", "relative_frobenius_error", "SKETCH_OUTPUTS"]

SKETCH_OUTPUTS = ("trace", "full")


def _tangent(key: jax.Array, j: jax.Array, leaves: list) -> list:
    """``v_j``: standard Gaussian leaves shaped like ``leaves``, from ``fold_in(key, j)`` alone."""
    kj = jax.random.fold_in(key, j)
    return [jax.random.normal(jax.random.fold_in(kj, i), jnp.shape(a), jnp.result_type(a))
            for i, a in enumerate(leaves)]


_SIGN_STREAM = 2**31 - 1  # fold_in index of the signs' key (the tangents' leaves use 0, 1, ...)


def _signs(key: jax.Array, j: jax.Array, d: int, dtype) -> jax.Array:
    """``s_j``: D random signs, from ``fold_in(key, j)`` too (a stream the leaves never use)."""
    return jax.random.rademacher(jax.random.fold_in(jax.random.fold_in(key, j), _SIGN_STREAM), (d,), dtype)


@partial(jax.jit, static_argnames=("tangent_batch",))
def _tangent_block(key: jax.Array, first: jax.Array, selected: list, *, tangent_batch: int):
    """``(tangents, js)``: ``v_j`` for ``j = first … first + t − 1``, stacked leaf by leaf,
    and those ``j``. ``first`` is traced: one program serves every block and every
    ``sketch_dim``."""
    js = first + jnp.arange(tangent_batch)
    return jax.vmap(lambda j: _tangent(key, j, selected))(js), js


@partial(jax.jit, static_argnames=("treedef", "mask", "outputs"))
def _jvp_block(model: Model, selected: list, fixed: list, x: jax.Array, key: jax.Array, tangents: list,
               js: jax.Array, *, treedef: Any, mask: tuple, outputs: str) -> jax.Array:
    """``J(x) v_j`` for a block of tangents (unscaled): ``[b, t]`` (trace, mixed by the
    signs ``s_j``) or ``[b, D, t]`` (full); one forward pass, the tangents vmapped."""

    def f(sel):
        return model.apply(merge_leaves(treedef, mask, sel, fixed), x)  # [b, D]

    def column(tangent, j):
        _, jv = jax.jvp(f, (selected,), (tangent,))  # J(x) v_j: [b, D]
        if outputs == "trace":
            return jv @ _signs(key, j, jv.shape[-1], jv.dtype)  # [b]
        return jv

    return jnp.moveaxis(jax.vmap(column)(tangents, js), 0, -1)


def _row_chunks(x: Any, batch_size: int):
    """``(start, stop, padded device chunk)``: chunks padded to their shape bucket, so a
    pool that shrinks every round reuses the compiled programs."""
    n = int(np.shape(x)[0])
    for start in range(0, n, batch_size):
        xb = np.asarray(x[start : start + batch_size])
        m = xb.shape[0]
        rows = min(bucket(m), max(batch_size, m))
        if rows > m:
            xb = np.concatenate([xb, np.zeros((rows - m,) + xb.shape[1:], xb.dtype)])
        yield start, start + m, jax.device_put(xb)


def ntk_sketch(
    model: Model,
    x: Any,
    key: jax.Array,
    sketch_dim: int = 512,
    *,
    params: Any = None,
    subset: Subset = "all",
    outputs: str = "trace",
    batch_size: int = 256,
    tangent_batch: int = 32,
) -> jax.Array:
    """Sketched NTK features ``φ(x) = J(x) V / √k`` (see the module docstring).

    Args:
      model: the network; its deterministic pass is differentiated.
      x: ``[n, ...]`` examples (a NumPy array or memory map is read chunk by chunk).
      key: draws ``V`` (and the output signs); the **same key** must be used for every
        set of rows whose features are compared (pool and labeled set).
      sketch_dim: ``k``, the number of random directions.
      params: ``{"body", "head"}`` params, default ``model.params``.
      subset: the differentiated leaves, as in :func:`jaxal.ntk.kernel.kernel`.
      outputs: ``"trace"`` (``[n, k]``, kernel ``Σ_c Θ_cc``) or ``"full"``
        (``[n, D, k]``, kernel ``Θ_cd``).
      batch_size: rows per chunk (each chunk is padded to its shape bucket).
      tangent_batch: tangents drawn at once and pushed through one vmapped forward pass
        (memory ``tangent_batch·(P + batch_size·activations)``). Each block of tangents
        is drawn once and applied to every row chunk; one compiled program serves every
        block and every ``sketch_dim`` (the last block's surplus columns are dropped).

    Returns:
      float features on the device, ``[n, k]`` or ``[n, D, k]``.
    """
    check_choice("outputs", outputs, SKETCH_OUTPUTS)
    for name, v in (("sketch_dim", sketch_dim), ("batch_size", batch_size), ("tangent_batch", tangent_batch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    check_nonempty("x", x)
    if isinstance(x, jax.Array):
        x = np.asarray(x)  # host slices: a device slice compiles a program per size
    k, tb = int(sketch_dim), int(tangent_batch)
    split = split_params(model.params if params is None else params, subset)
    out = None
    for j0 in range(0, k, tb):
        tangents, js = _tangent_block(key, np.int32(j0), split.selected, tangent_batch=tb)
        for start, stop, xb in _row_chunks(x, int(batch_size)):
            cols = np.asarray(_jvp_block(model, split.selected, split.fixed, xb, key, tangents, js,
                                         treedef=split.treedef, mask=split.mask, outputs=outputs))
            if out is None:
                out = np.empty((int(np.shape(x)[0]),) + cols.shape[1:-1] + (k,), cols.dtype)
            out[start:stop, ..., j0 : j0 + tb] = cols[: stop - start, ..., : min(tb, k - j0)]
    return jax.device_put(out / np.sqrt(np.asarray(k, out.dtype)))


def last_layer_features(model: Model, x: Any, *, bias: bool = True, batch_size: int = 4096) -> jax.Array:
    """``[h(x), 1]`` (``[n, d+1]``; ``[n, d]`` with ``bias=False``): the penultimate features.

    For a Dense head, ``φ·φ'`` is the NTK of the head's parameters for one output
    (``h·h' + 1``; the trace over D outputs is D times it), the cheap base kernel."""
    return head_features(model, x, batch_size) if bias else embed(model, x, batch_size)


def jacobian_size(model: Model, x_example: Any, *, params: Any = None, subset: Subset = "all") -> int:
    """``D·P``: the width of :func:`jacobian_features` (shape inference only)."""
    split = split_params(model.params if params is None else params, subset)
    p = sum(int(np.prod(np.shape(a))) for a in split.selected)
    d = int(jax.eval_shape(lambda xx: model.logits(xx), jnp.asarray(np.asarray(x_example)[:1])).shape[-1])
    return d * p


@partial(jax.jit, static_argnames=("treedef", "mask"))
def _jacobian_rows(model: Model, selected: list, fixed: list, x: jax.Array, *, treedef: Any, mask: tuple):
    def one(xi):
        jac = jax.jacrev(lambda sel: model.apply(merge_leaves(treedef, mask, sel, fixed), xi[None])[0])(selected)
        return jnp.concatenate([j.reshape(j.shape[0], -1) for j in jac], axis=1).reshape(-1)  # [D·P]

    return jax.vmap(one)(x)


def jacobian_features(model: Model, x: Any, *, params: Any = None, subset: Subset = "all",
                      max_features: int | None = None, batch_size: int = 256) -> jax.Array:
    """The exact Jacobian ``[n, D·P]`` (outputs major, leaves in flattening order):
    ``φ(x)·φ(x')`` is the trace NTK exactly. ``ValueError`` when ``D·P > max_features``."""
    check_nonempty("x", x)
    if max_features is not None:
        width = jacobian_size(model, x, params=params, subset=subset)
        if width > max_features:
            raise ValueError(
                f"the exact Jacobian has D·P = {width} columns per example, more than {max_features}; "
                "use the sketched features (features='ntk_sketch', sketch_dim=...) instead"
            )
    split = split_params(model.params if params is None else params, subset)
    fn = partial(_jacobian_rows, model, split.selected, split.fixed, treedef=split.treedef, mask=split.mask)
    return batched(lambda xb: fn(xb), x, int(batch_size))


def relative_frobenius_error(approx: Any, exact: Any) -> float:
    """``‖approx − exact‖_F / ‖exact‖_F`` in float64."""
    a = np.asarray(approx, np.float64)
    e = np.asarray(exact, np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {e.shape}")
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


def sketch_error(model: Model, x: Any, key: jax.Array, sketch_dim: int = 512, *, subset: Subset = "all",
                 memory_bytes: int | None = None) -> float:
    """Relative Frobenius error of the sketched trace kernel ``φ φᵀ`` on ``x`` against
    the exact trace NTK ``jaxal.ntk.kernel.kernel(model, x, contraction="trace")``."""
    phi = np.asarray(ntk_sketch(model, x, key, sketch_dim, subset=subset), np.float64)
    exact = kernel(model, x, contraction="trace", subset=subset, memory_bytes=memory_bytes)
    return relative_frobenius_error(phi @ phi.T, exact)


#: Another name of :func:`sketch_error` (the one ``benchmarks/regression.py`` imports).
sketch_relative_error = sketch_error
