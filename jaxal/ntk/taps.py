"""Find Dense / Conv layers in a traced model and tap their inputs and output-cotangents.

The :class:`~jaxal.Model` holds only pure functions, so layers are found generically:
the per-example forward ``(leaves, x[None]) -> logits [1, C]`` is traced to a jaxpr
and every ``dot_general`` or ``conv_general_dilated`` whose weight operand is a
parameter leaf (possibly through ``reshape`` / ``transpose`` / ``convert_element_type``,
and through ``jit`` boundaries, which are inlined) *used exactly once* is a
**site**. For a site ``y = op(a, W)`` the gradient w.r.t. ``W`` is bilinear in the
activation ``a`` and the output cotangent ``δ = ∂f/∂y``:

- ``dot_general``: ``∂f/∂W[k, o] = sum_p a[p, k] δ[p, o]`` over the free
  ("position") axes ``p`` of ``a``;
- ``conv_general_dilated``: ``∂f/∂W = sum_p patch_p(a) ⊗ δ_p`` over output positions.

:func:`evaluate` is a small jaxpr interpreter that records ``a`` at every site and
adds a zero *perturbation* ``eps`` to the site's output; differentiating w.r.t.
``eps`` gives ``δ``. Layout permutations of ``W`` do not change inner products of
gradients, which is all the kernel needs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

# Floor shim: jax.extend.core.DropVar exists from jax 0.10.0 (which deprecates
# jax.core.DropVar); older jax, the 0.8.0 floor included, has it in jax.core only.
DropVar = getattr(jcore, "DropVar", None) or jax.core.DropVar

LAYOUT_PRIMS = frozenset({"reshape", "transpose", "convert_element_type", "copy", "copy_p"})
SITE_PRIMS = frozenset({"dot_general", "conv_general_dilated"})
CALL_PRIMS = frozenset({"jit", "pjit", "closed_call", "core_call", "checkpoint", "remat", "remat2"})


class Site(NamedTuple):
    """A structured layer: the eqn at ``sid`` uses parameter leaf ``leaf`` as its weight.

    Attributes:
      sid: ``tuple[int, ...]``, eqn index path through inlined ``jit`` calls.
      leaf: index of the weight leaf in the flattened params.
      prim: ``"dot_general"`` or ``"conv_general_dilated"``.
      weight_pos: operand position of the weight (0 or 1).
      params: the eqn's params (dimension numbers, strides, padding, ...).
      act_shape: per-example activation shape (leading axis 1).
      out_shape: per-example output shape (leading axis 1).
      weight_shape: shape of the weight operand as the eqn sees it.
      out_dtype: dtype of the output (and of its perturbation).
    """

    sid: tuple
    leaf: int
    prim: str
    weight_pos: int
    params: dict
    act_shape: tuple
    out_shape: tuple
    weight_shape: tuple
    out_dtype: Any


def _sub_jaxpr(eqn) -> tuple[Any, list] | None:
    """``(jaxpr, consts)`` of an inlinable call eqn, else None."""
    if eqn.primitive.name not in CALL_PRIMS:
        return None
    sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if sub is None:
        return None
    if hasattr(sub, "consts") and hasattr(sub, "jaxpr"):
        return sub.jaxpr, list(sub.consts)
    return sub, []


def _is_var(v) -> bool:
    return not isinstance(v, jcore.Literal)


def _site_ok(eqn, pos: int) -> bool:
    name = eqn.primitive.name
    if name == "dot_general":
        (_, _), (lb, rb) = eqn.params["dimension_numbers"]
        return len(lb) == 0 and len(rb) == 0
    if name == "conv_general_dilated":
        return pos == 1 and eqn.params["feature_group_count"] == 1 and eqn.params["batch_group_count"] == 1
    return False


def find_sites(closed_jaxpr, n_leaves: int, candidate: tuple) -> tuple[list[Site], float]:
    """Structured sites among leaves ``i < n_leaves`` with ``candidate[i]`` True.

    Returns ``(sites, activation_size)``: the sites (one per structured leaf) and the
    number of array elements produced by all eqns (a per-example memory estimate).
    """
    uses: dict[int, list] = {i: [] for i in range(n_leaves)}
    act = [0.0]

    def walk(jaxpr, prov: dict, path: tuple) -> None:
        for k, eqn in enumerate(jaxpr.eqns):
            sid = path + (k,)
            in_prov = [prov.get(v) if _is_var(v) else None for v in eqn.invars]
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                inner, _ = sub
                inner_prov = {iv: p for iv, p in zip(inner.invars, in_prov) if p is not None}
                walk(inner, inner_prov, sid)
                for ov, iv in zip(eqn.outvars, inner.outvars):
                    if _is_var(iv) and iv in inner_prov:
                        prov[ov] = inner_prov[iv]
                continue
            for ov in eqn.outvars:
                act[0] += float(np.prod(getattr(ov.aval, "shape", ()) or (1,)))
            name = eqn.primitive.name
            if name in LAYOUT_PRIMS and in_prov and in_prov[0] is not None and len(eqn.invars) == 1:
                dt_out = getattr(eqn.outvars[0].aval, "dtype", None)
                if dt_out is not None and jnp.issubdtype(dt_out, jnp.floating):
                    prov[eqn.outvars[0]] = in_prov[0]
                    continue
            for pos, p in enumerate(in_prov):
                if p is not None:
                    uses[p].append((sid, eqn, pos))
        for v in jaxpr.outvars:
            if _is_var(v) and v in prov:
                uses[prov[v]].append((None, None, -1))

    top = closed_jaxpr.jaxpr
    walk(top, {v: i for i, v in enumerate(top.invars[:n_leaves])}, ())
    sites = []
    for leaf, u in uses.items():
        if not candidate[leaf] or len(u) != 1:
            continue
        sid, eqn, pos = u[0]
        if eqn is None or eqn.primitive.name not in SITE_PRIMS or not _site_ok(eqn, pos):
            continue
        sites.append(
            Site(
                sid=sid,
                leaf=leaf,
                prim=eqn.primitive.name,
                weight_pos=pos,
                params=dict(eqn.params),
                act_shape=tuple(eqn.invars[1 - pos].aval.shape),
                out_shape=tuple(eqn.outvars[0].aval.shape),
                weight_shape=tuple(eqn.invars[pos].aval.shape),
                out_dtype=eqn.outvars[0].aval.dtype,
            )
        )
    return sites, act[0]


def evaluate(closed_jaxpr, args: list, eps: dict, sites: dict) -> tuple[list, dict]:
    """Run ``closed_jaxpr`` on ``args``, adding ``eps[sid]`` to each site's output.

    Args:
      closed_jaxpr: the traced model.
      args: its inputs (flattened param leaves, then ``x``).
      eps: ``{sid: array of the site's output shape}`` (zeros; differentiate w.r.t. it).
      sites: ``{sid: Site}``.

    Returns:
      ``(outputs, taps)`` with ``taps[sid]`` the activation operand of the site.
    """
    taps: dict = {}

    def run(jaxpr, consts, invals, path):
        env: dict = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = c
        for v, a in zip(jaxpr.invars, invals):
            env[v] = a
        for k, eqn in enumerate(jaxpr.eqns):
            sid = path + (k,)
            vals = [read(v) for v in eqn.invars]
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                outs = run(sub[0], sub[1], vals, sid)
            else:
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                subfuns = []
                if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
                    subfuns, bind_params = bind_params
                ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
                if ctx is None:
                    outs = eqn.primitive.bind(*subfuns, *vals, **bind_params)
                else:
                    with ctx:
                        outs = eqn.primitive.bind(*subfuns, *vals, **bind_params)
                if not eqn.primitive.multiple_results:
                    outs = [outs]
                if sid in sites:
                    taps[sid] = vals[1 - sites[sid].weight_pos]
                    outs = [outs[0] + eps[sid]]
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    outs = run(closed_jaxpr.jaxpr, closed_jaxpr.consts, list(args), ())
    return outs, taps


def site_matrices(site: Site, act: jax.Array, delta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example ``(A [P, K], D [Cd, P, O])`` with ``∂f_c/∂W ≅ A^T D_c``.

    ``act`` is the tapped activation (``site.act_shape``), ``delta`` the cotangents
    ``[Cd, *site.out_shape]``. ``P`` counts positions (free axes of the activation,
    or output pixels of a convolution), ``K`` the contracted (patch) features and ``O``
    the output features.
    """
    cd = delta.shape[0]
    if site.prim == "dot_general":
        (lc, rc), _ = site.params["dimension_numbers"]
        a_contract = tuple(rc if site.weight_pos == 0 else lc)
        a_free = tuple(i for i in range(act.ndim) if i not in a_contract)
        k = int(np.prod([act.shape[i] for i in a_contract]))
        a_mat = jnp.transpose(act, a_free + a_contract).reshape(-1, k)
        p = a_mat.shape[0]
        n_w_free = len(site.weight_shape) - len(a_contract)
        out_nd = len(site.out_shape)
        if site.weight_pos == 1:  # out = [a_free..., w_free...]
            d = delta.reshape(cd, p, -1)
        else:  # out = [w_free..., a_free...]
            perm = (0,) + tuple(range(1 + n_w_free, 1 + out_nd)) + tuple(range(1, 1 + n_w_free))
            d = jnp.transpose(delta, perm).reshape(cd, p, -1)
        return a_mat, d
    # conv_general_dilated, weight is rhs
    prm = site.params
    dn = prm["dimension_numbers"]
    rhs_spatial = [site.weight_shape[i] for i in dn.rhs_spec[2:]]
    patches = jax.lax.conv_general_dilated_patches(
        act,
        filter_shape=rhs_spatial,
        window_strides=prm["window_strides"],
        padding=prm["padding"],
        lhs_dilation=prm["lhs_dilation"],
        rhs_dilation=prm["rhs_dilation"],
        dimension_numbers=dn,
        precision=jax.lax.Precision.HIGHEST,
    )
    perm = (dn.out_spec[0],) + tuple(dn.out_spec[2:]) + (dn.out_spec[1],)
    a_mat = jnp.transpose(patches, perm).reshape(-1, patches.shape[dn.out_spec[1]])
    d = jnp.transpose(delta, (0,) + tuple(i + 1 for i in perm)).reshape(cd, a_mat.shape[0], -1)
    return a_mat, d
