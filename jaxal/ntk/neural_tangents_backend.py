"""Optional backend: ``jaxal.ntk.kernel(..., implementation="neural_tangents")``.

Computes the same kernels as jaxal's own engines (same shapes, same contraction
semantics) with ``neural_tangents.empirical_ntk_fn``, for cross-checking. neural-tangents
0.6.5, the newest release, imports only with jax/jaxlib 0.5.3 (and pulls in
TensorFlow), so it is not a dependency: it is imported on first use, not with jaxal
(importing it also imports TensorFlow, seconds), and a clear ImportError names the
versions it needs when it is missing or does not import. ``benchmarks/nt_requirements.txt``
pins a working environment; ``benchmarks/vs_neural_tangents.py`` compares the two.

Conventions: neural-tangents' ``trace_axes`` gives the *mean* over the traced logits,
jaxal's ``trace`` the sum, so traced kernels are multiplied by the number of outputs.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import jax
import jax.numpy as jnp

from jaxal.model import Model
from jaxal.ntk.contract import output_map
from jaxal.ntk.params import Subset, split_params

REQUIRED = ("neural-tangents==0.6.5 with jax==0.5.3 and jaxlib==0.5.3 (and tensorflow, tf2jax); "
            "see benchmarks/nt_requirements.txt for a full pin set")


@functools.cache
def load() -> Any:
    """The ``neural_tangents`` module, or an ImportError that names the versions it needs."""
    try:
        return importlib.import_module("neural_tangents")
    except Exception as e:  # ImportError, or an AttributeError from a jax it does not know
        raise ImportError(
            f"implementation='neural_tangents' needs {REQUIRED}; this environment has jax "
            f"{jax.__version__} and importing neural_tangents failed: {type(e).__name__}: {e}") from e


def available() -> bool:
    """Whether ``implementation="neural_tangents"`` can run here."""
    try:
        load()
        return True
    except ImportError:
        return False


def nt_axes(contraction: str, diagonal: bool) -> tuple[tuple, tuple]:
    """``(trace_axes, diagonal_axes)`` of neural-tangents for a jaxal contraction."""
    trace_axes = () if contraction in ("full", "diagonal") else (-1,)
    diagonal_axes = (0,) if diagonal or contraction == "diagonal" else ()
    return trace_axes, diagonal_axes


def outputs_fn(model: Model, split, contraction: str):
    """``f(selected_leaves, x [n, ...]) -> [n, Cd]``: the differentiated outputs, as in jaxal's engines."""
    out_fn, _ = output_map(contraction)

    def f(selected, x):
        params = split.merge(selected)
        return jax.vmap(out_fn)(model.apply(params, x))

    return f


def kernel(model: Model, x1: Any, x2: Any | None = None, *, params: Any = None, contraction: str = "trace",
           subset: Subset = "all", diagonal: bool = False, nt_implementation: int = 1) -> jax.Array:
    """The empirical NTK by neural-tangents, in :func:`jaxal.ntk.kernel`'s conventions.

    Args: as :func:`jaxal.ntk.kernel` (no chunking, memory bound or mesh: neural-tangents
    computes the block at once); ``nt_implementation`` is its ``NtkImplementation``
    (1 Jacobian contraction, 2 NTK-vector products, 3 structured derivatives).

    Raises:
      ImportError: neural-tangents is missing or does not import with this jax.
      ValueError: ``x2`` given with a diagonal kernel.
    """
    nt = load()
    if isinstance(params, str):
        params, subset = None, params
    params = model.params if params is None else params
    if diagonal and contraction == "full":
        contraction = "diagonal"
    is_diag = diagonal or contraction == "diagonal"
    if is_diag and x2 is not None:
        raise ValueError("a diagonal kernel (contraction='diagonal' or diagonal=True) takes no x2")
    split = split_params(params, subset)
    f = outputs_fn(model, split, contraction)
    trace_axes, diagonal_axes = nt_axes(contraction, is_diag)
    ntk_fn = nt.empirical_ntk_fn(f, trace_axes=trace_axes, diagonal_axes=diagonal_axes, vmap_axes=0,
                                 implementation=nt.NtkImplementation(nt_implementation))
    x1 = jnp.asarray(x1)
    k = ntk_fn(x1, None if x2 is None else jnp.asarray(x2), list(split.selected))
    if trace_axes:  # neural-tangents' trace is the mean over the Cd outputs
        k = k * jax.eval_shape(f, list(split.selected), x1[:1]).shape[-1]
    return k
