"""``jaxal.ntk.kernel``: the empirical neural tangent kernel of a :class:`~jaxal.Model`."""

from __future__ import annotations

import collections
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxal.model import Model, embed
from jaxal.ntk import chunking, neural_tangents_backend, taps
from jaxal.ntk.contract import CONTRACTIONS, output_map
from jaxal.ntk.engine import Engine
from jaxal.ntk.jacobian import jacobian_engine
from jaxal.ntk.ntvp import ntvp_engine
from jaxal.ntk.params import Subset, split_params
from jaxal.ntk.structured import head_engine, structured_engine, trace_model
from jaxal.validation import check_choice

IMPLEMENTATIONS = ("jacobian", "ntvp", "structured", "auto")
DEFAULT_MEMORY_BYTES = 2 * 1024**3

_CACHE: "collections.OrderedDict[Any, tuple]" = collections.OrderedDict()
_CACHE_SIZE = 32


def _aval_key(tree: Any) -> tuple:
    return tuple((tuple(np.shape(a)), str(jnp.result_type(a))) for a in tree)


def _head_only(split, model: Model) -> bool:
    return model.dense_head and all(m == (p[0] == "head") for m, p in zip(split.mask, split.paths))


class Plan(NamedTuple):
    """What every engine builder may use, traced once per (model, subset, contraction, shape).

    Attributes:
      model, split, contraction: as given to :func:`kernel`.
      closed: the traced forward pass of one example (a closed jaxpr).
      leaves: the differentiated parameter leaves.
      sites: the Dense/Conv layers found in ``closed`` (:func:`jaxal.ntk.taps.find_sites`).
      out_fn, mode: the output map of ``contraction`` (:func:`jaxal.ntk.contract.output_map`).
      num_classes: ``C``; cd: outputs per example after the map (1 or ``C``).
      n_params: number of differentiated scalars; act_size: activation size per example;
      itemsize: bytes per float.
    """

    model: Model
    split: Any
    contraction: str
    closed: Any
    leaves: list
    sites: list
    out_fn: Any
    mode: str
    num_classes: int
    cd: int
    n_params: int
    act_size: float
    itemsize: int


def _plan(model: Model, split, contraction: str, x_example) -> Plan:
    out_fn, mode = output_map(contraction)
    leaves = jax.tree_util.tree_leaves(split.merge(split.selected))
    closed = trace_model(model, split.treedef, leaves, x_example)
    num_classes = int(closed.out_avals[0].shape[-1])
    itemsize = jnp.dtype(closed.out_avals[0].dtype).itemsize
    cd = 1 if contraction in ("single_logit", "sum_logits") else num_classes
    sites, act_size = taps.find_sites(closed, len(leaves), split.mask)
    n_sel = sum(int(np.prod(np.shape(a))) for a in split.selected)
    return Plan(model, split, contraction, closed, leaves, sites, out_fn, mode, num_classes, cd, n_sel, act_size,
                itemsize)


def _sizes(plan: Plan) -> dict:
    return dict(cd=plan.cd, n_params=plan.n_params, act_size=plan.act_size, itemsize=plan.itemsize)


def _jacobian(plan: Plan) -> Engine:
    s = plan.split
    return jacobian_engine(plan.model, s.treedef, s.mask, plan.out_fn, plan.mode, **_sizes(plan))


def _ntvp(plan: Plan) -> Engine:
    s = plan.split
    return ntvp_engine(plan.model, s.treedef, s.mask, plan.out_fn, plan.mode, **_sizes(plan))


def _structured(plan: Plan) -> Engine:
    s, model = plan.split, plan.model
    if _head_only(s, model):  # a Dense head alone: the closed form C·(h·h' + 1)
        d = int(model.params["head"]["kernel"].shape[0])  # dense_head: kernel [d, C]
        scale = float(plan.num_classes) if plan.contraction == "trace" else 1.0
        return head_engine(model, s.treedef, s.mask, plan.mode, num_classes=plan.num_classes, scale=scale, d=d,
                           act_size=plan.act_size, itemsize=plan.itemsize)
    return structured_engine(plan.closed, plan.sites, plan.act_size, s.mask, plan.out_fn, plan.mode, cd=plan.cd,
                             leaves=plan.leaves, itemsize=plan.itemsize)


#: Every engine builder, one signature: ``builder(plan) -> Engine``. ``"auto"`` takes
#: ``"structured"`` unless its features would not fit a quarter of the memory bound.
ENGINES: dict[str, Callable[[Plan], Engine]] = {"jacobian": _jacobian, "ntvp": _ntvp, "structured": _structured}


def _build(model: Model, split, contraction: str, implementation: str, x_example, memory_bytes: int, mesh):
    """``(compiled, engine, chosen implementation)``, cached on everything static."""
    key = (
        model.features, model.head, model.dense_head, split.treedef, split.mask,
        _aval_key(split.selected), _aval_key(split.fixed), contraction, implementation,
        tuple(x_example.shape), str(x_example.dtype), mesh,
        memory_bytes if implementation == "auto" else None,
    )
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    plan = _plan(model, split, contraction, x_example)
    chosen = "structured" if implementation == "auto" else implementation
    engine = ENGINES[chosen](plan)
    if implementation == "auto" and engine.feature_bytes + engine.pair_bytes > memory_bytes // 4:
        engine, chosen = ENGINES["ntvp"](plan), "ntvp"  # Jacobian-sized: products instead
    compiled = chunking.compile_engine(engine, mesh)
    _CACHE[key] = (compiled, engine, chosen)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return _CACHE[key]


def engine_for(model: Model, split: Any, contraction: str, implementation: str, x_example: Any,
               memory_bytes: int) -> Engine:
    """The :class:`~jaxal.ntk.engine.Engine` :func:`kernel` uses for these settings: its
    ``prepare``/``pair``/``diag`` are pure functions of the parameters and a batch, for
    callers that compute kernel rows inside their own jitted code (the pool look-ahead)."""
    return _build(model, split, contraction, implementation, x_example, int(memory_bytes), None)[1]


def _default_mesh() -> Mesh | None:
    devices = jax.devices()
    return Mesh(np.array(devices), ("pool",)) if len(devices) > 1 else None


def kernel(
    model: Model,
    x1: Any,
    x2: Any | None = None,
    *,
    params: Any = None,
    contraction: str = "trace",
    subset: Subset = "all",
    implementation: str = "auto",
    memory_bytes: int | None = None,
    mesh: Mesh | None = None,
    diagonal: bool = False,
) -> jax.Array:
    """Empirical NTK ``Θ(x1, x2) = J(x1) J(x2)^T`` of ``model``, ``J = ∂f/∂θ_subset``.

    ``f(x) = model.apply(params, x)`` are the logits ``[C]`` of one example and
    ``θ_subset`` the parameter leaves picked by ``subset``.

    Args:
      model: a :class:`jaxal.Model` (deterministic pass; BatchNorm statistics frozen).
      x1: ``[n1, ...]`` examples (the pool axis; sharded over ``mesh``).
      x2: ``[n2, ...]`` examples with the same trailing shape as ``x1``; ``None``
        means ``x2 = x1``.
      params: ``{"body", "head"}`` parameters, default ``model.params``. A string is
        read as ``subset`` (``kernel(model, x, params="head")``).
      contraction: which kernel over the logits:

        - ``"full"``: ``[n1, n2, C, C]``, ``Θ[i, j, c, d] = <∂f_c(x1_i), ∂f_d(x2_j)>``.
        - ``"trace"``: ``[n1, n2]``, ``sum_c Θ[i, j, c, c]``. This is the **sum** over
          logits; neural-tangents' ``trace_axes`` gives the *mean* (divide by C).
        - ``"single_logit"``: ``[n1, n2]``, ``Θ[i, j, 0, 0]`` (the kernel of logit 0;
          used as ``Θ ⊗ I_C`` by the look-ahead strategies; C² cheaper).
        - ``"sum_logits"``: ``[n1, n2]``, the kernel of ``sum_c f_c / sqrt(C)``
          (``sum_{c,d} Θ[i, j, c, d] / C``).
        - ``"diagonal"``: ``[n1, C, C]``, ``Θ(x_i, x_i)`` only (``x2`` must be None).

      subset: ``"all"`` | ``"head"`` | ``"body"`` | ``callable(path, leaf) -> bool``
        with ``path`` a tuple of names such as ``("body", "Dense_0", "kernel")``.
      implementation:

        - ``"jacobian"``: per-example ``jacrev``, contracted leaf by leaf
          (memory ``O(chunk · C · P)``).
        - ``"ntvp"``: ``vjp`` then ``jvp`` per ``x2`` example and output; no Jacobian
          stored (memory ``O(C · P)``), but ``n2 · C`` forward passes over ``x1``.
        - ``"structured"``: Dense / Conv layers from Gram matrices of layer inputs and
          output cotangents (one forward + backward per example and output); other
          leaves by ``jacrev``; a head-only Dense head uses ``(h·h' + 1) δ_cd``.
        - ``"auto"``: ``structured``, or ``ntvp`` when a single example's structured
          features would exceed a quarter of ``memory_bytes``.
        - ``"neural_tangents"``: the optional neural-tangents backend, same results
          (:mod:`jaxal.ntk.neural_tangents_backend`; ImportError when it does not import).
      memory_bytes: bound (per device) on the estimated largest intermediate; both
        example axes are chunked to fit. Default 2 GiB.
      mesh: a ``jax.sharding.Mesh``; the ``x1`` axis is sharded over its first axis.
        Default: all devices when there are several, else none.
      diagonal: with a scalar contraction, return only ``Θ(x_i, x_i)`` as ``[n1]``
        (``x2`` must be None). ``contraction="diagonal"`` is the ``[n1, C, C]`` form.

    Returns:
      ``[n1, n2, C, C]`` (full), ``[n1, n2]`` (scalar contractions), ``[n1, C, C]``
      (diagonal) or ``[n1]`` (``diagonal=True`` with a scalar contraction), in the
      logits' dtype (float32, or float64 under ``jax.enable_x64``).

    Raises:
      ValueError: unknown contraction / implementation / subset, a subset selecting no
        leaf, empty ``x1`` or ``x2``, mismatched trailing shapes, ``x2`` with a
        diagonal, or a memory bound too small for one example.
    """
    check_choice("contraction", contraction, CONTRACTIONS)
    if implementation == "neural_tangents":  # optional backend, outside IMPLEMENTATIONS
        return neural_tangents_backend.kernel(model, x1, x2, params=params, contraction=contraction,
                                              subset=subset, diagonal=diagonal)
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    if isinstance(params, str):
        params, subset = None, params
    params = model.params if params is None else params
    is_diag = diagonal or contraction == "diagonal"
    if diagonal and contraction == "full":
        contraction = "diagonal"
    if is_diag and x2 is not None:
        raise ValueError("a diagonal kernel (contraction='diagonal' or diagonal=True) takes no x2")
    x1 = _as_batch("x1", x1)
    if x2 is not None:
        x2 = _as_batch("x2", x2)
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(f"x1 and x2 have mismatched example shapes: {x1.shape[1:]} vs {x2.shape[1:]}")
    if memory_bytes is None:
        memory_bytes = DEFAULT_MEMORY_BYTES
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, (int, np.integer)) or memory_bytes <= 0:
        raise ValueError(f"memory_bytes must be a positive integer, got {memory_bytes!r}")
    if mesh is None:
        mesh = _default_mesh()
    split = split_params(params, subset)
    x_example = jax.ShapeDtypeStruct(x1.shape[1:], x1.dtype)
    compiled, engine, _ = _build(model, split, contraction, implementation, x_example, int(memory_bytes), mesh)
    n_dev = 1 if mesh is None else int(mesh.shape[mesh.axis_names[0]])
    plan = chunking.plan_chunks(engine, x1.shape[0], None if is_diag else (x1 if x2 is None else x2).shape[0],
                                int(memory_bytes), n_dev)
    return chunking.run(compiled, plan, split.selected, split.fixed, x1, x2, is_diag)


def chosen_implementation(model: Model, x1: Any, *, contraction: str = "trace", subset: Subset = "all",
                          memory_bytes: int | None = None) -> str:
    """The implementation ``implementation="auto"`` runs for these arguments."""
    x1 = _as_batch("x1", x1)
    split = split_params(model.params, subset)
    mem = int(memory_bytes or DEFAULT_MEMORY_BYTES)
    _, _, chosen = _build(model, split, contraction, "auto", jax.ShapeDtypeStruct(x1.shape[1:], x1.dtype), mem, None)
    return chosen


def head_features(model: Model, x: Any, batch_size: int = 4096) -> jax.Array:
    """``φ(x) = [h(x), 1]``: ``[n, d + 1]``; a Dense head's kernel is ``C · φ φ'^T`` (trace)."""
    h = embed(model, x, batch_size)
    return jnp.concatenate([h, jnp.ones((h.shape[0], 1), h.dtype)], axis=1)


def _as_batch(name: str, x: Any):
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} is empty: the kernel block needs at least one example")
    return x
