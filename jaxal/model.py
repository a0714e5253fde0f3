"""The pure-function model protocol every jaxal strategy works on.

jaxal does not own the user's network. A :class:`Model` is two pure functions and
their parameters::

    logits(x) = head(params["head"], features(params["body"], x))

The body/head split is what BADGE (gradients of the head), coreset and TypiClust
(penultimate features), last-layer CRC and head-only NTKs need. Non-trainable
collections (BatchNorm statistics) are closed over in inference mode, so the
empirical NTK of a ``Model`` is the kernel of a fixed function of its params and is
positive semi-definite.

Shapes: ``x`` is a batch ``[n, ...]``; ``features`` returns ``[n, d]``; ``head``
returns ``[n, C]``.

This module is the ground floor: the batched prediction helpers (:func:`predict_logits`,
:func:`predict_probs`, :func:`embed`) live here so that every other layer (NTK engine,
look-ahead, trainers, strategies) can use them without importing a higher one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxal.ops.buckets import bucket

Params = Any
Array = jax.Array

__all__ = ["Model", "Frozen", "LinenFeatures", "LinenHead", "from_linen", "from_nnx", "from_functions", "num_classes", "batched", "predict_logits",
           "predict_probs", "predict_probs_then", "predict_logits_then", "embed", "features_rows"]


class Frozen:
    """Non-trainable collections (BatchNorm statistics) held by a model's functions.

    Compared and hashed by the identity of their arrays (every empty one is equal):
    the values are baked into compiled programs, so two different statistics never
    share one, while models without such state (an MLP), or rebuilt around the very
    same statistics (BatchNorm frozen between rounds), share every compiled program.
    A ``Frozen`` holds its arrays, so an identity it is compared by is never reused by
    another array while it lives (e.g. in a jit cache).
    """

    __slots__ = ("value", "_leaves", "_treedef")

    def __init__(self, value: Mapping[str, Any]) -> None:
        self.value = dict(value)
        self._leaves, self._treedef = jax.tree_util.tree_flatten(self.value)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Frozen) and self._treedef == other._treedef
                and len(self._leaves) == len(other._leaves)
                and all(a is b for a, b in zip(self._leaves, other._leaves)))

    def __hash__(self) -> int:
        return hash((self._treedef, tuple(id(a) for a in self._leaves)))


@struct.dataclass
class LinenFeatures:
    """``features(params_body, x, key=None)`` of a linen module, a pytree.

    Compared by value: the module (linen modules compare by value), the method's name,
    the keyword arguments of a deterministic / a stochastic pass, and the frozen
    non-trainable collections (:class:`Frozen`, by identity). Two built from equal
    modules without BatchNorm statistics are equal, so jitted functions taking a
    :class:`Model` (a static field) compile once per shape, not once per round.
    """

    module: nn.Module = struct.field(pytree_node=False)
    method: str = struct.field(pytree_node=False)
    inference_kwargs: tuple = struct.field(pytree_node=False)
    stochastic_kwargs: tuple | None = struct.field(pytree_node=False)
    frozen: Frozen = struct.field(pytree_node=False)

    def __call__(self, params_body: Params, x: Array, key: Array | None = None) -> Array:
        variables = {"params": params_body, **self.frozen.value}
        method = getattr(type(self.module), self.method)
        if key is None or self.stochastic_kwargs is None:
            return self.module.apply(variables, x, method=method, **dict(self.inference_kwargs))
        return self.module.apply(variables, x, method=method, rngs={"dropout": key}, **dict(self.stochastic_kwargs))


@struct.dataclass
class LinenHead:
    """``head(params_head, h)`` of a linen module's head submodule, a pytree (see :class:`LinenFeatures`)."""

    module: nn.Module = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False)
    frozen: Frozen = struct.field(pytree_node=False)

    def __call__(self, params_head: Params, h: Array) -> Array:
        name = self.name
        return self.module.apply({"params": {name: params_head}, **self.frozen.value}, h,
                                 method=lambda m, hh: getattr(m, name)(hh))


@struct.dataclass
class Model:
    """A network as pure functions plus parameters (a pytree; safe to pass to ``jit``).

    Attributes:
      features: ``features(params_body, x, key=None) -> h`` with ``x: [n, ...]`` and
        ``h: [n, d]``. ``key`` is a ``jax.random`` key for stochastic passes (MC
        dropout); ``None`` means deterministic inference.
      head: ``head(params_head, h) -> logits [n, C]``.
      params: ``{"body": ..., "head": ...}``, the trainable parameters.
      dense_head: True when ``head`` is exactly ``h @ params_head["kernel"] +
        params_head["bias"]`` (kernel ``[d, C]``, bias ``[C]``); unlocks exact closed
        forms (head NTK, BADGE and EGL fast paths, CRC's dual trick).
      stochastic: True when ``features`` uses ``key`` (dropout), enabling BALD.
    """

    features: Callable[..., Array] = struct.field(pytree_node=False)
    head: Callable[[Params, Array], Array] = struct.field(pytree_node=False)
    params: Params
    dense_head: bool = struct.field(pytree_node=False, default=False)
    stochastic: bool = struct.field(pytree_node=False, default=False)

    def apply(self, params: Params, x: Array, key: Array | None = None) -> Array:
        """Logits ``[n, C]`` of ``x`` under ``params`` (``{"body", "head"}``)."""
        return self.head(params["head"], self.features(params["body"], x, key))

    def logits(self, x: Array, key: Array | None = None) -> Array:
        """Logits ``[n, C]`` of ``x`` under the model's own params."""
        return self.apply(self.params, x, key)

    def embed(self, x: Array, key: Array | None = None) -> Array:
        """Penultimate features ``[n, d]`` of ``x``."""
        return self.features(self.params["body"], x, key)

    def replace_params(self, params: Params) -> "Model":
        """The same functions with other parameters."""
        return self.replace(params=params)


def from_functions(
    features: Callable[..., Array],
    head: Callable[[Params, Array], Array],
    params: Params,
    *,
    dense_head: bool = False,
    stochastic: bool = False,
) -> Model:
    """Build a :class:`Model` from plain functions.

    ``features`` may take ``(params_body, x)`` or ``(params_body, x, key)``.
    """
    if not isinstance(params, Mapping) or set(params) != {"body", "head"}:
        raise ValueError("params must be a mapping with exactly the keys 'body' and 'head'")
    feats = features
    try:
        import inspect

        n_args = len(inspect.signature(features).parameters)
    except (TypeError, ValueError):  # builtins, odd callables: assume (params, x, key)
        n_args = 3
    if n_args < 3:
        def feats(p, x, key=None, _f=features):  # noqa: E306 - adapt a key-less function
            return _f(p, x)

    return Model(features=feats, head=head, params=dict(params), dense_head=dense_head, stochastic=stochastic)


def _is_dense_params(p: Any) -> bool:
    return (
        isinstance(p, Mapping)
        and set(p) == {"kernel", "bias"}
        and getattr(p["kernel"], "ndim", 0) == 2
        and getattr(p["bias"], "ndim", 0) == 1
    )


def from_linen(
    module: nn.Module,
    variables: Mapping[str, Any],
    *,
    head: str = "head",
    features: str = "features",
    inference_kwargs: Mapping[str, Any] | None = None,
    stochastic_kwargs: Mapping[str, Any] | None = None,
) -> Model:
    """Adapt a Flax linen module and its variables to a :class:`Model`.

    The module must expose a method named ``features`` (penultimate representation)
    and a submodule attribute named ``head`` defined in ``setup`` (so it can be called
    on its own). Collections other than ``"params"`` (``batch_stats``, ...) are closed
    over and the module is applied with ``inference_kwargs`` (e.g. ``{"train":
    False}``) so BatchNorm uses its running averages. When ``features`` is called with
    a key, ``stochastic_kwargs`` are used instead and the key is passed as the
    ``"dropout"`` rng (MC dropout with frozen BatchNorm).

    Args:
      module: the linen module (unbound).
      variables: its variables, ``{"params": ..., "batch_stats": ...}``.
      head: attribute name of the head submodule; its params ``variables["params"][head]``.
      features: name of the method returning the penultimate features.
      inference_kwargs: keyword arguments for a deterministic pass.
      stochastic_kwargs: keyword arguments for a pass with a dropout key;
        ``None`` makes the model deterministic (``stochastic=False``).
    """
    if "params" not in variables:
        raise ValueError("variables must contain a 'params' collection")
    all_params = variables["params"]
    if head not in all_params:
        raise ValueError(
            f"head={head!r} is not a top-level params entry; found {sorted(all_params)}"
        )
    if not hasattr(module, features):
        raise ValueError(f"module {type(module).__name__} has no method {features!r}")
    body_params = {k: v for k, v in all_params.items() if k != head}
    head_params = all_params[head]
    frozen = Frozen({k: v for k, v in variables.items() if k != "params"})
    inf_kwargs = tuple(sorted(dict(inference_kwargs or {}).items()))
    sto_kwargs = None if stochastic_kwargs is None else tuple(sorted(dict(stochastic_kwargs).items()))
    features_fn = LinenFeatures(module, features, inf_kwargs, sto_kwargs, frozen)
    head_fn = LinenHead(module, head, frozen)

    dense = False
    if _is_dense_params(head_params):
        try:
            bound = module.bind(variables)
            dense = type(getattr(bound, head)) is nn.Dense
        except Exception:  # pragma: no cover - modules whose head is built in compact
            dense = False
    return Model(
        features=features_fn,
        head=head_fn,
        params={"body": body_params, "head": head_params},
        dense_head=dense,
        stochastic=sto_kwargs is not None,
    )


def from_nnx(module: Any, *, head: str = "head", features: str = "features") -> Model:
    """Adapt a Flax NNX module to a :class:`Model`.

    The module must have a ``features`` method and a ``head`` attribute (a submodule).
    ``nnx.Param`` state is split into body and head; every other state (BatchNorm
    statistics, rng counters) is frozen as it is, so put the module in evaluation mode
    (``module.eval()``) first. The NNX adapter is deterministic (no MC-dropout key).
    """
    from flax import nnx

    if not hasattr(module, features):
        raise ValueError(f"module {type(module).__name__} has no method {features!r}")
    if not hasattr(module, head):
        raise ValueError(f"module {type(module).__name__} has no submodule {head!r}")
    graphdef, params_state, rest = nnx.split(module, nnx.Param, ...)
    pure = nnx.to_pure_dict(params_state)
    if head not in pure:
        raise ValueError(f"head={head!r} holds no nnx.Param; found {sorted(pure)}")
    body_params = {k: v for k, v in pure.items() if k != head}
    head_params = pure[head]

    def _merged(params_pure):
        state = jax.tree_util.tree_map(lambda a: a, params_state)  # a fresh container to fill
        nnx.replace_by_pure_dict(state, params_pure)
        return nnx.merge(graphdef, state, rest)

    def features_fn(params_body, x, key=None):
        m = _merged({**params_body, head: head_params})
        return getattr(m, features)(x)

    def head_fn(params_head, h):
        m = _merged({**body_params, head: params_head})
        return getattr(m, head)(h)

    dense = _is_dense_params(head_params) and type(getattr(module, head)).__name__ == "Linear"
    return Model(
        features=features_fn,
        head=head_fn,
        params={"body": body_params, "head": head_params},
        dense_head=dense,
        stochastic=False,
    )


def num_classes(model: Model, x_example: Array) -> int:
    """Number of logits ``C``, found by shape inference (no FLOPs)."""
    out = jax.eval_shape(lambda x: model.logits(x), jnp.asarray(x_example[:1]))
    return int(out.shape[-1])


# --------------------------------------------------------------------------- batched prediction


def _on_device(x: Any) -> jax.Array:
    # jax.device_put, not jnp.asarray: the latter compiles a small program per new shape
    return x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x))


def batched(fn, x: Any, batch_size: int = 4096, *, pad: bool = True) -> jax.Array:
    """Apply a row-wise ``fn`` to ``x`` in row chunks (bounded memory) and concatenate.

    A chunk shorter than ``batch_size`` (all of a small ``x``, or the last chunk) is
    zero-padded to its shape bucket (:func:`jaxal.ops.buckets.bucket`) and the padded
    rows' outputs dropped, so a pool that shrinks every round reuses ``fn``'s compiled
    program instead of compiling one per size. ``fn`` must treat rows independently
    (inference-mode networks do). ``pad=False`` calls ``fn`` on the exact chunks (for an
    ``fn`` that is not compiled).
    """
    n = int(np.shape(x)[0])
    call = _padded_call if pad else (lambda f, xb, _: f(_on_device(xb)))
    if n <= batch_size:
        return call(fn, x, batch_size)
    outs = [call(fn, x[i : i + batch_size], batch_size) for i in range(0, n, batch_size)]
    return jnp.concatenate(outs, axis=0)


def _padded_call(fn, x: Any, batch_size: int) -> jax.Array:
    m = int(np.shape(x)[0])
    rows = min(bucket(m), max(batch_size, m))
    if rows == m or isinstance(x, jax.Array):
        return fn(_on_device(x))
    xp = np.asarray(x)
    xp = np.concatenate([xp, np.zeros((rows - m,) + xp.shape[1:], xp.dtype)])
    out = fn(jax.device_put(xp))
    # the slice on the host, then back: a device slice would compile a program per size
    return jax.device_put(np.asarray(out)[:m])


@jax.jit
def _apply(model: Model, x: jax.Array, key: jax.Array | None) -> jax.Array:
    # One compiled function for every call: ``Model`` is a pytree whose functions are
    # static, so the cache is keyed by (model functions, shapes), not rebuilt per call.
    return model.apply(model.params, x, key)


@jax.jit
def _features(model: Model, x: jax.Array) -> jax.Array:
    return model.features(model.params["body"], x)


def predict_logits(model: Model, x: Any, batch_size: int = 4096, key: jax.Array | None = None) -> jax.Array:
    """Logits ``[n, C]`` of ``x``, computed in jit-compiled chunks."""
    return batched(lambda xb: _apply(model, xb, key), x, batch_size)


def predict_probs(model: Model, x: Any, batch_size: int = 4096) -> jax.Array:
    """Softmax probabilities ``[n, C]`` of ``x``."""
    return predict_probs_then(model, x, _identity, batch_size)


def predict_probs_then(model: Model, x: Any, fn: Callable[[jax.Array], jax.Array],
                       batch_size: int = 4096) -> jax.Array:
    """``fn(softmax(logits))`` of ``x``, with ``fn`` row-wise (e.g. an uncertainty score
    ``[b, C] -> [b]``): network, softmax and ``fn`` compiled as one program per chunk
    bucket, so a pool that shrinks every round compiles nothing new. ``fn`` must be
    hashable (a module-level function)."""
    return batched(lambda xb: _probs_then(model, xb, fn), x, batch_size)


def predict_logits_then(model: Model, x: Any, fn: Callable[[jax.Array], jax.Array],
                        batch_size: int = 4096) -> jax.Array:
    """``fn(logits)`` of ``x`` with ``fn`` row-wise, compiled with the network as one
    program per chunk bucket (as :func:`predict_probs_then`, without the softmax)."""
    return batched(lambda xb: _logits_then(model, xb, fn), x, batch_size)


@functools.partial(jax.jit, static_argnums=2)
def _logits_then(model: Model, x: jax.Array, fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
    return fn(model.apply(model.params, x, None))


def _identity(a: jax.Array) -> jax.Array:
    return a


@functools.partial(jax.jit, static_argnums=2)
def _probs_then(model: Model, x: jax.Array, fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
    return fn(jax.nn.softmax(model.apply(model.params, x, None), axis=-1))


def features_rows(model: Model, x: jax.Array) -> jax.Array:
    """Penultimate features of a batch (row-wise, un-jitted: for :func:`jaxal.pool.map_rows`)."""
    return model.features(model.params["body"], x)


def embed(model: Model, x: Any, batch_size: int = 4096) -> jax.Array:
    """Penultimate features ``[n, d]`` of ``x``, in chunks."""
    return batched(lambda xb: _features(model, xb), x, batch_size)
