"""Input checks shared by strategies, training and the loop.

Every check raises ``ValueError`` naming the offending argument, so a user sees what
was wrong with *their* input rather than a shape error from deep inside XLA.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, Iterable, Literal, Mapping, Union

import numpy as np

__all__ = [
    "check_budget",
    "check_finite",
    "check_labels",
    "check_label_values",
    "check_same_length",
    "check_nonempty",
    "check_choice",
    "check_key",
    "check_option_types",
    "check_positive",
    "describe_type",
]


def check_nonempty(name: str, x: Any) -> None:
    """Raise if ``x`` has no rows."""
    if np.ndim(x) == 0 or np.shape(x)[0] == 0:
        raise ValueError(f"{name} is empty: it must hold at least one example")


def check_budget(budget: Any, pool_size: int, name: str = "budget") -> int:
    """Return ``budget`` as an int after checking ``0 < budget <= pool_size``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {budget!r}")
    budget = int(budget)
    if budget <= 0:
        raise ValueError(f"{name} must be positive, got {budget}")
    if pool_size <= 0:
        raise ValueError("the pool is empty: nothing left to query")
    if budget > pool_size:
        raise ValueError(f"{name}={budget} is larger than the pool ({pool_size} examples)")
    return budget


def _count_nonfinite(x: Any) -> int:
    """NaN/inf count of a floating device array, reduced where it lives (JAX is imported
    only by callers that already hold a device array). The test is ``sum(x·0)`` (NaN
    iff some entry is NaN/inf), which XLA reduces without a temporary the size of
    ``x``; the count runs only when that fires."""
    import jax
    import jax.numpy as jnp

    global _COUNT
    if _COUNT is None:
        _COUNT = (jax.jit(lambda a: jnp.isfinite(jnp.sum(a.astype(jnp.float32) * 0.0))),
                  jax.jit(lambda a: jnp.sum(~jnp.isfinite(a.astype(jnp.float32)), dtype=jnp.int32)))
    if bool(np.asarray(_COUNT[0](x).addressable_data(0))):
        return 0
    return int(np.asarray(_COUNT[1](x).addressable_data(0)))


_COUNT = None


def check_finite(name: str, x: Any) -> None:
    """Raise if a floating array holds NaN or inf (a device array is checked where it
    lives: only the count of bad values comes back, so a sharded pool is not copied)."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array) and jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        bad = _count_nonfinite(x)
        if bad:
            raise ValueError(f"{name} contains {bad} NaN/inf value(s)")
        return
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16":
        a32 = a.astype(np.float32, copy=False)
        if not np.all(np.isfinite(a32)):
            bad = int(np.size(a32) - np.count_nonzero(np.isfinite(a32)))
            raise ValueError(f"{name} contains {bad} NaN/inf value(s)")


def check_label_values(name: str, y: Any) -> np.ndarray:
    """``y`` as a 1-D array of whole numbers (any integer or float dtype), or a
    ``ValueError`` naming ``name`` that says what is wrong: a shape, strings or objects
    (with how to map class names to integers), NaN/inf, or fractional values."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer labels, got shape {a.shape}")
    if a.size == 0:
        return a
    if a.dtype.kind in "USOV" or not (np.issubdtype(a.dtype, np.number) or a.dtype.kind == "b"):
        sample = ", ".join(repr(v) for v in a[:3].tolist())
        raise ValueError(
            f"{name} holds {a.dtype} values ({sample}, ...), not integer class labels 0..C-1; map class names "
            f"to integers first, e.g. classes, {name} = np.unique({name}, return_inverse=True)"
        )
    if np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} holds complex values; class labels must be integers 0..C-1")
    if not np.issubdtype(a.dtype, np.integer) and a.dtype.kind != "b":
        finite = np.isfinite(a)
        if not finite.all():
            bad = int(a.size - np.count_nonzero(finite))
            raise ValueError(f"{name} contains {bad} NaN/inf label(s) (first at index {int(np.argmin(finite))}); "
                             "every example needs an integer class label")
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name} must hold integer class labels, got fractional values (dtype {a.dtype})")
    return a


def check_labels(name: str, y: Any, num_classes: int) -> None:
    """Raise unless ``y`` is a 1-D integer array with values in ``[0, num_classes)``."""
    a = check_label_values(name, y)
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside [0, {num_classes}) for num_classes={num_classes}: min {a.min()}, "
            f"max {a.max()}"
        )


def check_same_length(**arrays: Any) -> None:
    """Raise unless every named array has the same number of rows."""
    lengths = {k: int(np.shape(v)[0]) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(f"mismatched lengths: {desc}")


def check_choice(kind: str, value: str, valid: Iterable[str]) -> None:
    """Raise for an unknown name, listing the valid ones."""
    valid = sorted(valid)
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


def check_key(name: str, key: Any) -> None:
    """Raise unless ``key`` is a ``jax.random`` key: a typed key (``jax.random.key``)
    or a raw ``uint32[2]`` one (``jax.random.PRNGKey``)."""
    import jax

    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    if dtype is not None and np.dtype(dtype) == np.uint32 and tuple(np.shape(key))[-1:] == (2,):
        return
    raise ValueError(f"{name} must be a jax.random key, e.g. jax.random.key(0), got {type(key).__name__} {key!r}")


def check_positive(options: Mapping[str, Any], *names: str) -> None:
    """Raise unless each of ``names`` present (and not None) in ``options`` is an integer >= 1."""
    for n in names:
        v = options.get(n)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"option {n} must be a positive integer, got {v!r}")


_UNIONS = (Union, types.UnionType)


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in _UNIONS:
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (Sequence, list, tuple, typing.Sequence):
        return isinstance(value, (list, tuple))
    return True  # a type this check does not model: let the strategy judge


def describe_type(hint: Any) -> str:
    """``int | None`` -> ``"an integer or None"``: a type hint in words, for messages."""
    origin = typing.get_origin(hint)
    if origin in _UNIONS:
        return " or ".join(describe_type(h) for h in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    words = {bool: "True/False", int: "an integer", float: "a number", str: "a string", type(None): "None"}
    if hint in words:
        return words[hint]
    if origin in (Sequence, list, tuple, typing.Sequence):
        return "a list or tuple"
    return getattr(hint, "__name__", str(hint))


def check_option_types(owner: str, options: Mapping[str, Any], hints: Mapping[str, Any]) -> None:
    """Raise when an option's value does not fit its type hint (``int``, ``float``,
    ``bool``, ``str``, ``Literal``, unions and ``None``; other hints are not checked).

    From the command line every value is a Python literal or a string, so a typo such
    as ``group_size=five`` is caught here, before any training.
    """
    for name, value in options.items():
        hint = hints.get(name, Any)
        if not _matches(value, hint):
            raise ValueError(
                f"{owner}: option {name}={value!r} ({type(value).__name__}) must be {describe_type(hint)}"
            )
