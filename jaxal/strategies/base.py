"""The strategy protocol and the name registry.

A strategy is one pure function::

    strategy(key, ctx: Context, budget: int, **options) -> indices | Query

returning ``budget`` distinct indices into ``ctx.x_pool``. Strategies never train.
Stateful strategies (ALBL's bandit) read ``ctx.state`` and return a :class:`Query`
carrying the new state; the loop stores it and hands it back next round.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import jax
import numpy as np

from jaxal.model import Model, num_classes as _num_classes
from jaxal.validation import (
    check_budget,
    check_choice,
    check_finite,
    check_labels,
    check_nonempty,
    check_same_length,
)

__all__ = ["Context", "Query", "Strategy", "register", "get", "names", "select", "make_context"]


class Context(NamedTuple):
    """What a strategy sees in one round.

    Attributes:
      model: the trained :class:`~jaxal.model.Model` (params included).
      x_labeled: ``[L, ...]`` labeled inputs.
      y_labeled: ``[L]`` int labels in ``[0, num_classes)``.
      x_pool: ``[U, ...]`` candidates; returned indices refer to these rows.
      num_classes: ``C``, the number of logits.
      state: strategy state carried across rounds by the loop (``None`` at first).
      round: index of the acquisition round (0 for the first query).
    """

    model: Model
    x_labeled: Any
    y_labeled: Any
    x_pool: Any
    num_classes: int
    state: Any = None
    round: int = 0


class Query(NamedTuple):
    """A strategy's full answer.

    Attributes:
      indices: ``[budget]`` distinct int indices into ``ctx.x_pool``.
      info: diagnostics worth recording (jitter used, scores summary, ...);
        JSON-serialisable scalars/lists.
      state: new strategy state for the next round (``None`` when stateless).
    """

    indices: np.ndarray
    info: dict = {}
    state: Any = None


class Strategy(Protocol):
    def __call__(self, key: jax.Array, ctx: Context, budget: int, **options: Any) -> Any: ...


_REGISTRY: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator registering a strategy function under ``name``."""

    def deco(fn: Strategy) -> Strategy:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"strategy {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every built-in strategy.
    import jaxal.strategies  # noqa: F401


def names() -> list[str]:
    """Sorted names of every registered strategy."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get(name: str) -> Strategy:
    """The strategy registered as ``name`` (``ValueError`` listing valid names)."""
    _ensure_loaded()
    check_choice("strategy", name, _REGISTRY)
    return _REGISTRY[name]


def make_context(
    model: Model,
    *,
    x_labeled: Any,
    y_labeled: Any,
    x_pool: Any,
    num_classes: int | None = None,
    state: Any = None,
    round: int = 0,
) -> Context:
    """Validate inputs and build a :class:`Context`."""
    check_nonempty("x_pool", x_pool)
    check_finite("x_pool", x_pool)
    check_finite("x_labeled", x_labeled)
    check_same_length(x_labeled=x_labeled, y_labeled=y_labeled)
    if np.shape(x_labeled)[1:] != np.shape(x_pool)[1:] and np.shape(x_labeled)[0] > 0:
        raise ValueError(
            f"x_labeled rows have shape {np.shape(x_labeled)[1:]} but x_pool rows have "
            f"shape {np.shape(x_pool)[1:]}"
        )
    if num_classes is None:
        num_classes = _num_classes(model, np.asarray(x_pool))
    y = np.asarray(y_labeled)
    check_labels("y_labeled", y, num_classes)
    return Context(model, x_labeled, y.astype(np.int32), x_pool, int(num_classes), state, round)


def as_query(result: Any, budget: int, pool_size: int, name: str = "strategy") -> Query:
    """Normalise a strategy's return value to a checked :class:`Query`."""
    q = result if isinstance(result, Query) else Query(indices=result)
    idx = np.asarray(q.indices).astype(np.int64).reshape(-1)
    if idx.shape[0] != budget:
        raise RuntimeError(f"{name} returned {idx.shape[0]} indices, expected {budget}")
    if np.unique(idx).shape[0] != budget:
        raise RuntimeError(f"{name} returned duplicate indices")
    if idx.min() < 0 or idx.max() >= pool_size:
        raise RuntimeError(f"{name} returned indices outside [0, {pool_size})")
    return q._replace(indices=idx, info=dict(q.info))


def select(
    strategy: str | Strategy,
    key: jax.Array,
    model: Model,
    *,
    x_labeled: Any,
    y_labeled: Any,
    x_pool: Any,
    budget: int,
    num_classes: int | None = None,
    state: Any = None,
    return_query: bool = False,
    **options: Any,
) -> Any:
    """Pick ``budget`` pool indices with a strategy given by name or as a function.

    Returns a ``[budget]`` int array (or the full :class:`Query` with
    ``return_query=True``).
    """
    fn = get(strategy) if isinstance(strategy, str) else strategy
    ctx = make_context(
        model, x_labeled=x_labeled, y_labeled=y_labeled, x_pool=x_pool, num_classes=num_classes, state=state
    )
    budget = check_budget(budget, int(np.shape(x_pool)[0]))
    q = as_query(fn(key, ctx, budget, **options), budget, int(np.shape(x_pool)[0]), getattr(fn, "__name__", "strategy"))
    return q if return_query else q.indices
