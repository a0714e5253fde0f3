"""Structured fast path: kernels of Dense / Conv layers from small Gram matrices.

For a layer ``y = a W (+ b)`` the per-example gradient is ``∂f_c/∂W = sum_p a_p ⊗ δ_{c,p}``
(``p`` over positions: 1 for a Dense layer on vectors, output pixels for a Conv), so

    Θ_W^{cd}(x, x') = sum_{p, q} (a_p · a'_q) (δ_{c,p} · δ'_{d,q}).

One forward and one backward pass per example and output collect every site's
activation ``a`` and cotangent ``δ`` (:mod:`jaxal.ntk.taps`); the kernel is a sum of
Hadamard products of Gram matrices. When ``P² (K + O) > K O`` (convolutions with many
pixels) the per-example gradient ``A^T D`` is materialised instead, which is cheaper.
Every selected leaf that is not a site (biases, BatchNorm scales, shared weights) is
handled exactly by per-example ``jacrev`` in the same backward pass, so the total is
always the exact empirical NTK.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.ntk import taps
from jaxal.ntk.contract import contract_diag, contract_pair
from jaxal.ntk.engine import Engine, merge_leaves


def _gram_sizes(site: taps.Site) -> tuple[int, int, int]:
    """``(P, K, O)`` of a site."""
    if site.prim == "dot_general":
        (lc, rc), _ = site.params["dimension_numbers"]
        a_contract = rc if site.weight_pos == 0 else lc
        k = int(np.prod([site.act_shape[i] for i in a_contract]))
        p = int(np.prod(site.act_shape)) // max(k, 1)
        o = int(np.prod(site.weight_shape)) // max(k, 1)
        return p, k, o
    dn = site.params["dimension_numbers"]
    o = site.weight_shape[dn.rhs_spec[0]]
    k = int(np.prod(site.weight_shape)) // o
    p = int(np.prod(site.out_shape)) // o
    return p, k, o


def use_gram(site: taps.Site) -> bool:
    """Gram form when it is cheaper per pair than the materialised gradient."""
    p, k, o = _gram_sizes(site)
    return p * p * (k + o) <= k * o


def trace_model(model, treedef, leaves: list, x_example) -> jax.extend.core.ClosedJaxpr:
    """The jaxpr of ``(leaves..., x [1, ...]) -> logits [1, C]``."""

    def fwd(leaves_, x):
        return model.apply(jax.tree_util.tree_unflatten(treedef, leaves_), x)

    return jax.make_jaxpr(fwd)(leaves, jax.ShapeDtypeStruct((1,) + tuple(x_example.shape), x_example.dtype))


def structured_engine(closed, sites: list, act_size: float, mask, out_fn, mode, *, cd: int, leaves: list, itemsize: int) -> Engine:
    """An :class:`Engine` over Gram matrices of tapped layers, plus ``jacrev`` for the rest.

    Args:
      closed: the traced model (:func:`trace_model`); ``sites`` and ``act_size`` from
        :func:`jaxal.ntk.taps.find_sites` on it.
      mask: per-leaf selection; out_fn, mode: from :func:`jaxal.ntk.contract.output_map`.
      cd: number of differentiated outputs; leaves: the flattened params (for shapes).
    """
    n_leaves = len(leaves)
    site_of_leaf = {s.leaf: s for s in sites}
    by_sid = {s.sid: s for s in sites}
    sel_index = [i for i in range(n_leaves) if mask[i]]
    rest_leaves = [i for i in sel_index if i not in site_of_leaf]
    gram = [use_gram(s) for s in sites]

    def assemble(sel, fixed, rest):
        it_rest = iter(rest)
        sel_by_leaf = dict(zip(sel_index, sel))
        full, it_f = [], iter(fixed)
        for i in range(n_leaves):
            if not mask[i]:
                full.append(next(it_f))
            elif i in site_of_leaf:
                full.append(sel_by_leaf[i])
            else:
                full.append(next(it_rest))
        return full

    def f(rest, eps, sel, fixed, x):
        outs, tapped = taps.evaluate(closed, assemble(sel, fixed, rest) + [x[None]], eps, by_sid)
        return out_fn(outs[0][0]), tapped

    def prepare(sel, fixed, x):
        sel_by_leaf = dict(zip(sel_index, sel))
        rest = [sel_by_leaf[i] for i in rest_leaves]
        eps = {s.sid: jnp.zeros(s.out_shape, s.out_dtype) for s in sites}
        jac = jax.jacrev(f, argnums=(0, 1), has_aux=True)
        (j_rest, deltas), tapped = jax.vmap(jac, in_axes=(None, None, None, None, 0))(rest, eps, sel, fixed, x)
        grams, grads = [], []
        for s, g in zip(sites, gram):
            a, d = jax.vmap(lambda t, e, s=s: taps.site_matrices(s, t, e))(tapped[s.sid], deltas[s.sid])
            if g:
                grams.append((a, d))
            else:
                grads.append(jnp.einsum("bpk,bcpo->bcko", a, d))
        return {"jac": list(j_rest) + grads, "gram": grams}

    def pair(sel, fixed, f1, f2):
        total = contract_pair(f1["jac"], f2["jac"], mode) if f1["jac"] else 0.0
        for (a1, d1), (a2, d2) in zip(f1["gram"], f2["gram"]):
            if a1.shape[1] == 1:
                ga = a1[:, 0] @ a2[:, 0].T
                if mode == "full":
                    total = total + ga[:, :, None, None] * jnp.einsum("ico,jdo->ijcd", d1[:, :, 0], d2[:, :, 0])
                else:
                    total = total + ga * jnp.einsum("ico,jco->ij", d1[:, :, 0], d2[:, :, 0])
            else:
                ga = jnp.einsum("ipk,jqk->ijpq", a1, a2)
                spec = "ijpq,icpo,jdqo->ijcd" if mode == "full" else "ijpq,icpo,jcqo->ij"
                total = total + jnp.einsum(spec, ga, d1, d2, optimize=True)
        return total

    def diag(sel, fixed, feats):
        total = contract_diag(feats["jac"], mode) if feats["jac"] else 0.0
        for a, d in feats["gram"]:
            ga = jnp.einsum("ipk,iqk->ipq", a, a)
            spec = "ipq,icpo,idqo->icd" if mode == "full" else "ipq,icpo,icqo->i"
            total = total + jnp.einsum(spec, ga, d, d, optimize=True)
        return total

    feat = (cd + 1) * act_size
    pair_extra = 0
    for s, g in zip(sites, gram):
        p, k, o = _gram_sizes(s)
        feat += p * k + cd * p * o + (0 if g else cd * k * o)
        if g:
            pair_extra += p * p * (1 + (cd * cd if mode == "full" else 1))
    feat += cd * sum(int(np.prod(np.shape(leaves[i]))) for i in rest_leaves)
    out = cd * cd if mode == "full" else 1
    engine = Engine(
        prepare=prepare,
        pair=pair,
        diag=diag,
        feature_bytes=int(itemsize * feat),
        pair_bytes=int(itemsize * (2 * out + pair_extra)),
    )
    return engine


def head_engine(model, treedef, mask, mode, *, num_classes: int, scale: float, d: int, act_size: float, itemsize: int) -> Engine:
    """Closed form for the head-only kernel of a Dense head.

    ``Θ^{cd}(x, x') = (h·h' + 1) δ_{cd}``; ``trace`` is ``C (h·h' + 1)``, and
    ``single_logit`` / ``sum_logits`` are ``h·h' + 1`` (``scale`` is C or 1).
    """

    def prepare(sel, fixed, x):
        params = merge_leaves(treedef, mask, sel, fixed)
        return model.features(params["body"], x)

    def pair(sel, fixed, h1, h2):
        g = h1 @ h2.T + 1.0
        if mode == "full":
            return g[:, :, None, None] * jnp.eye(num_classes, dtype=g.dtype)
        return scale * g

    def diag(sel, fixed, h):
        g = jnp.sum(h * h, axis=-1) + 1.0
        if mode == "full":
            return g[:, None, None] * jnp.eye(num_classes, dtype=g.dtype)
        return scale * g

    out = num_classes**2 if mode == "full" else 1
    return Engine(prepare=prepare, pair=pair, diag=diag, feature_bytes=int(itemsize * (2 * d + act_size)), pair_bytes=int(itemsize * 2 * out))
