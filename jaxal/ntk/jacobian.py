"""Jacobian contraction: per-example ``jax.jacrev``, contracted leaf by leaf.

``F`` is the list of selected-leaf Jacobians ``[b, Cd, *leaf_shape]``; a block is
``sum_leaves <J1, J2>`` (see :mod:`jaxal.ntk.contract`). Memory is ``O(b · Cd · P)``
for one chunk; no ``n × P`` matrix exists beyond a chunk.
"""

from __future__ import annotations

import jax

from jaxal.ntk.contract import contract_diag, contract_pair
from jaxal.ntk.engine import Engine, example_fn


def jacobian_engine(model, treedef, mask, out_fn, mode, *, cd: int, n_params: int, act_size: float, itemsize: int) -> Engine:
    """An :class:`Engine` contracting materialised per-example Jacobians."""
    f = example_fn(model, treedef, mask, out_fn)

    def prepare(sel, fixed, x):
        return jax.vmap(jax.jacrev(f), in_axes=(None, None, 0))(sel, fixed, x)

    def pair(sel, fixed, j1, j2):
        return contract_pair(j1, j2, mode)

    def diag(sel, fixed, j):
        return contract_diag(j, mode)

    out = cd * cd if mode == "full" else 1
    return Engine(
        prepare=prepare,
        pair=pair,
        diag=diag,
        feature_bytes=int(itemsize * (cd * n_params + (cd + 1) * act_size)),
        pair_bytes=int(itemsize * 2 * out),
    )
