"""NTK-vector products: ``Θ(x1, x2) = J(x1) J(x2)^T`` without storing a Jacobian.

For each ``x2`` example ``j`` (sequentially, ``lax.map``) and each output ``d``, a
``vjp`` gives the parameter vector ``v = J(x2_j)^T e_d`` and a ``jvp`` of the whole
``x1`` chunk along ``v`` gives ``J(x1) v = Θ[:, j, :, d]``. Memory is one parameter
vector per output plus the forward-mode activations of the ``x1`` chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxal.ntk.engine import Engine, example_fn


def ntvp_engine(model, treedef, mask, out_fn, mode, *, cd: int, n_params: int, act_size: float, itemsize: int) -> Engine:
    """An :class:`Engine` whose features are the inputs themselves."""
    f = example_fn(model, treedef, mask, out_fn)
    f_batch = jax.vmap(f, in_axes=(None, None, 0))

    def columns(sel, fixed, x_src, x_dst):
        """``[b_dst, Cd, Cd]``: ``Θ(x_dst, x_src)[:, c, d]`` for one source example."""
        out, vjp_fn = jax.vjp(lambda s: f(s, fixed, x_src), sel)

        def one(ct):
            (v,) = vjp_fn(ct)
            return jax.jvp(lambda s: f_batch(s, fixed, x_dst), (sel,), (v,))[1]  # [b_dst, Cd]

        cols = jax.vmap(one)(jnp.eye(cd, dtype=out.dtype))  # [d, b, c]
        return jnp.transpose(cols, (1, 2, 0))

    def reduce(block):
        return block if mode == "full" else jnp.trace(block, axis1=-2, axis2=-1)

    def pair(sel, fixed, x1, x2):
        out = jax.lax.map(lambda xj: reduce(columns(sel, fixed, xj, x1)), x2)  # [b2, b1, ...]
        return jnp.swapaxes(out, 0, 1)

    def diag(sel, fixed, x):
        return jax.lax.map(lambda xi: reduce(columns(sel, fixed, xi, xi[None])[0]), x)

    out = cd * cd if mode == "full" else 1
    return Engine(
        prepare=lambda sel, fixed, x: x,
        pair=pair,
        diag=diag,
        feature_bytes=int(itemsize * 3 * cd * act_size),
        pair_bytes=int(itemsize * 2 * out),
        fixed_bytes=int(itemsize * 2 * cd * n_params),
    )
