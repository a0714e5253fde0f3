"""The strategy protocol and the name registry.

A strategy is one pure function::

    strategy(key, ctx: Context, budget: int, **options) -> indices | Query

returning ``budget`` distinct indices into ``ctx.x_pool``. Strategies never train.
Stateful strategies (ALBL's bandit) read ``ctx.state`` and return a :class:`Query`
carrying the new state; the loop stores it and hands it back next round.

The registry maps a name to an :class:`Entry`: the function, its optional sequential
(oracle-in-the-loop) twin, and the options it accepts. A new strategy is one function
and ``@register("name")``; a score-ranked one returns ``top_k_indices(scores, budget, key)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import jax
import numpy as np

from jaxal.model import Model
from jaxal.model import num_classes as _num_classes
from jaxal.ops.random import host_rng
from jaxal.validation import (
    check_budget,
    check_choice,
    check_finite,
    check_labels,
    check_nonempty,
    check_same_length,
)

__all__ = ["Context", "Query", "Strategy", "Entry", "register", "get", "entry", "names", "sequential_mode",
           "sequential_names", "option_names", "check_options", "select", "make_context", "as_query", "top_k_indices"]


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


class Entry(NamedTuple):
    """A registered strategy and what it can do.

    Attributes:
      name: the registry name.
      fn: the batch strategy ``fn(key, ctx, budget, **options)``.
      sequential: its oracle-in-the-loop twin ``(key, ctx, budget, oracle, **options)``,
        or ``None`` when it has none.
      options: the option names it accepts, or ``None`` for "read its signature".
    """

    name: str
    fn: Strategy
    sequential: Callable[..., Any] | None
    options: tuple[str, ...] | None


_REGISTRY: dict[str, Entry] = {}


def register(name: str, *, sequential: Callable[..., Any] | None = None,
             options: Any = None) -> Callable[[Strategy], Strategy]:
    """Decorator registering a strategy function under ``name``.

    Args:
      name: the name users select it by (``jaxal run --strategy NAME``).
      sequential: optional twin ``(key, ctx, budget, oracle, **options) -> Query`` that
        asks ``oracle(pool_row)`` for each true label before the next pick (used by
        ``--sequential`` / ``NAME-seq``).
      options: when the strategy takes ``**options``, the names it accepts (a sequence,
        or a NamedTuple class whose fields are the names), so configurations are
        checked before any training.

    A strategy defined outside jaxal registers the same way; it is then available to
    :func:`select`, ``jaxal run --strategy`` (with ``--import MODULE``) and the grid.
    """
    names = tuple(getattr(options, "_fields", options)) if options is not None else None

    def deco(fn: Strategy) -> Strategy:
        old = _REGISTRY.get(name)
        if old is not None and old.fn is not fn and _origin(old.fn) != _origin(fn):
            raise ValueError(f"strategy {name!r} is already registered (by {'.'.join(_origin(old.fn))})")
        _REGISTRY[name] = Entry(name, fn, sequential, names)
        return fn

    return deco


def _origin(fn: Any) -> tuple[str, str]:
    # Re-running the same definition (a notebook cell, a reloaded module) replaces the
    # entry; another function under a taken name is an error.
    return (getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", repr(fn)))


def names() -> list[str]:
    """Sorted names of every registered strategy."""
    return sorted(_REGISTRY)


def entry(name: str) -> Entry:
    """The registry :class:`Entry` of ``name`` (``ValueError`` listing valid names)."""
    check_choice("strategy", name, _REGISTRY)
    return _REGISTRY[name]


def get(name: str) -> Strategy:
    """The strategy registered as ``name`` (``ValueError`` listing valid names)."""
    return entry(name).fn


def sequential_mode(name: str) -> Callable[..., Any] | None:
    """The sequential (oracle-in-the-loop) twin of strategy ``name``, or ``None``."""
    return entry(name).sequential


def sequential_names() -> list[str]:
    """Names of registered strategies that have a sequential mode."""
    return [n for n in names() if _REGISTRY[n].sequential is not None]


def option_names(name: str, sequential: bool = False) -> tuple[str, ...] | None:
    """The options strategy ``name`` accepts (``None``: any, it takes ``**options``)."""
    e = entry(name)
    if e.options is not None:
        return e.options
    fn = e.sequential if sequential and e.sequential is not None else e.fn
    params = list(inspect.signature(fn).parameters.values())[3 + int(sequential):]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD))


def check_options(name: str, options: Mapping[str, Any], sequential: bool = False) -> None:
    """Raise ``ValueError`` when ``options`` holds a name strategy ``name`` does not take.

    Checked before any training, so a typo fails in a second, not after round 0.
    """
    if sequential and entry(name).sequential is None:
        raise ValueError(
            f"strategy {name!r} has no sequential mode; strategies that have one: "
            f"{', '.join(sequential_names()) or 'none'}"
        )
    valid = option_names(name, sequential)
    unknown = sorted(set(options) - set(valid)) if valid is not None else []
    if unknown:
        raise ValueError(
            f"strategy {name!r} takes no option {', '.join(unknown)}; its options: {', '.join(valid) or 'none'}"
        )


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


def top_k_indices(scores: Any, k: int, key: jax.Array | None = None) -> np.ndarray:
    """Indices of the ``k`` largest scores; exact ties broken uniformly at random."""
    s = np.asarray(scores, dtype=np.float64)
    if key is None:
        order = np.argsort(-s, kind="stable")
    else:
        tie = host_rng(key).random(s.shape)
        order = np.lexsort((tie, -s))
    return order[:k].astype(np.int64)
