"""The strategy protocol and the name registry.

A strategy is one pure function::

    strategy(key, ctx: Context, budget: int, **options) -> indices | Query

returning ``budget`` distinct indices into ``ctx.x_pool``. Strategies never train.
Stateful strategies (ALBL's bandit) read ``ctx.state`` and return a :class:`Query`
carrying the new state; the loop stores it and hands it back next round.

The registry maps a name to an :class:`Entry`: the function, its optional sequential
(oracle-in-the-loop) twin, and the options it accepts. A new strategy is one function
and ``@register("name")``; a score-ranked one returns ``pick(scores, budget, key, batch, beta)``
(top-``budget``, or a stochastic batch: options ``batch`` and ``beta``).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Literal, Mapping, NamedTuple, Protocol, Sequence

import jax
import numpy as np

from jaxal import pool
from jaxal.model import Model
from jaxal.model import num_classes as _num_classes
from jaxal.ops.random import host_rng
from jaxal.ops.stochastic_batch import stochastic_batch
from jaxal.validation import (
    check_budget,
    check_choice,
    check_finite,
    check_key,
    check_labels,
    check_nonempty,
    check_option_types,
    check_positive,
    check_same_length,
)

__all__ = ["Context", "Query", "Strategy", "Entry", "register", "get", "entry", "names", "sequential_mode",
           "sequential_names", "option_names", "check_options", "select", "make_context", "as_query", "top_k_indices",
           "positive_options", "on_mesh", "top_k_on_mesh", "BATCH_MODES", "BatchMode", "pick", "batch_options"]

BatchMode = Literal["topk", "power", "softmax", "softrank"]
BATCH_MODES: tuple[str, ...] = typing.get_args(BatchMode)


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
      mesh: a one-axis device mesh (:func:`jaxal.pool.pool_mesh`) to spread the pool's
        rows over, or ``None`` for the single-device path. On a mesh a strategy reads
        ``x_pool`` chunk by chunk (it may be a memory map or a TFDS ``data_source``),
        keeps what it caches for the round sharded by rows (:mod:`jaxal.pool`), and
        picks the same indices on any number of devices.
      memory_bytes: bound on what a strategy caches for the whole pool in a round (its
        features, logits or scores); ``ValueError`` with the size asked when it does not
        fit. ``None``: no bound.
      task: ``"classification"`` (``y_labeled`` int labels, ``num_classes`` logits) or
        ``"regression"`` (``y_labeled`` float32 ``[L]`` or ``[L, D]`` targets, the model
        has ``num_classes = D >= 1`` real outputs trained with squared loss).
    """

    model: Model
    x_labeled: Any
    y_labeled: Any
    x_pool: Any
    num_classes: int
    state: Any = None
    round: int = 0
    mesh: Any = None
    memory_bytes: int | None = None
    task: str = "classification"


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
      check: ``check(options, budget=..., model=..., sequential=...)`` raising
        ``ValueError`` for option values that cannot work (a group size that does not
        divide the budget, a deterministic model for MC dropout), or ``None``. Run
        before any training.
      hints: the options' type hints (from the signature or the options NamedTuple),
        used to refuse ill-typed values up front.
      tasks: the tasks it can serve (``"classification"``, ``"regression"``).
    """

    name: str
    fn: Strategy
    sequential: Callable[..., Any] | None
    options: tuple[str, ...] | None
    check: Callable[..., None] | None = None
    hints: Mapping[str, Any] = {}
    tasks: tuple[str, ...] = ("classification",)


_REGISTRY: dict[str, Entry] = {}


TASKS = ("classification", "regression")


def register(name: str, *, sequential: Callable[..., Any] | None = None,
             options: Any = None, check: Callable[..., None] | None = None,
             tasks: Sequence[str] = ("classification",)) -> Callable[[Strategy], Strategy]:
    """Decorator registering a strategy function under ``name``.

    Args:
      name: the name users select it by (``jaxal run --strategy NAME``).
      sequential: optional twin ``(key, ctx, budget, oracle, **options) -> Query`` that
        asks ``oracle(pool_row)`` for each true label before the next pick (used by
        ``--sequential`` / ``NAME-seq``).
      options: when the strategy takes ``**options``, the names it accepts (a sequence,
        or a NamedTuple class whose fields are the names), so configurations are
        checked before any training; a NamedTuple's annotations also type-check them.
      check: optional ``check(options: dict, *, budget: int, model: Model | None,
        sequential: bool)`` raising ``ValueError`` for values no query could use;
        :func:`check_options` runs it before any training and :func:`select` before
        each query.
      tasks: what it serves: ``("classification",)`` (the default: it reads class
        probabilities), ``("regression",)`` (it reads real outputs), or both.

    Option values are type-checked against the function's annotations (``int``,
    ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``).

    A strategy defined outside jaxal registers the same way; it is then available to
    :func:`select`, ``jaxal run --strategy`` (with ``--import MODULE``) and the grid.
    """
    names = tuple(getattr(options, "_fields", options)) if options is not None else None
    tasks = tuple(tasks)
    for t in tasks:
        check_choice("task", t, TASKS)

    def deco(fn: Strategy) -> Strategy:
        old = _REGISTRY.get(name)
        if old is not None and old.fn is not fn and _origin(old.fn) != _origin(fn):
            raise ValueError(f"strategy {name!r} is already registered (by {'.'.join(_origin(old.fn))})")
        hints = _hints(options) if hasattr(options, "_fields") else _hints(fn, skip=3)
        _REGISTRY[name] = Entry(name, fn, sequential, names, check, hints, tasks)
        return fn

    return deco


def positive_options(*option_names: str, batch: bool = False) -> Callable[..., None]:
    """A ``check`` for :func:`register`: each named option, when given, is an integer >= 1
    (and, with ``batch=True``, the stochastic-batch options: :func:`batch_options`)."""

    def check(options: Mapping[str, Any], *, budget: int, model: Model | None = None, sequential: bool = False) -> None:
        check_positive(options, *option_names)
        if batch:
            batch_options(options)

    return check


def _hints(obj: Any, skip: int = 0) -> dict[str, Any]:
    """Type hints of ``obj``'s options (a function's parameters after the first ``skip``,
    or a NamedTuple's fields); unresolvable annotations are left unchecked."""
    try:
        hints = typing.get_type_hints(obj)
    except Exception:  # annotations naming what the module does not import at run time
        return {}
    if hasattr(obj, "_fields"):
        return {k: hints[k] for k in obj._fields if k in hints}
    params = list(inspect.signature(obj).parameters)[skip:]
    return {k: hints[k] for k in params if k in hints}


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


def check_options(name: str, options: Mapping[str, Any], sequential: bool = False, *,
                  budget: int | None = None, model: Model | None = None, task: str | None = None) -> None:
    """Raise ``ValueError`` for options strategy ``name`` cannot use.

    Checks, in order: option names; value types against the strategy's annotations;
    and, when ``budget`` is given, the strategy's own ``check`` (values that need the
    budget or the model, e.g. CRC's group size, BALD's dropout). Run before any
    training, so a typo fails in a second, not after round 0. With ``task``, also that
    the strategy serves it (entropy reads class probabilities: no regression).
    """
    if task is not None and task not in entry(name).tasks:
        serving = [n for n in names() if task in _REGISTRY[n].tasks]
        raise ValueError(f"strategy {name!r} serves {' and '.join(entry(name).tasks)}, not {task}; strategies for "
                         f"{task}: {', '.join(serving) or 'none'}")
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
    e = entry(name)
    check_option_types(f"strategy {name!r}", options, e.hints)
    if e.check is not None and budget is not None:
        try:
            e.check(dict(options), budget=int(budget), model=model, sequential=bool(sequential))
        except ValueError as err:
            raise ValueError(f"strategy {name!r}: {err}") from None


def make_context(
    model: Model,
    *,
    x_labeled: Any,
    y_labeled: Any,
    x_pool: Any,
    num_classes: int | None = None,
    state: Any = None,
    round: int = 0,
    mesh: Any = None,
    memory_bytes: int | None = None,
    task: str = "classification",
) -> Context:
    """Validate inputs and build a :class:`Context` (on a ``mesh`` the pool is not read
    whole here: it may not fit, and each strategy checks what it computes from it).
    ``task="regression"``: ``y_labeled`` real targets ``[L]`` or ``[L, D]``,
    ``num_classes`` the model's ``D >= 1`` outputs."""
    check_choice("task", task, TASKS)
    check_nonempty("x_pool", x_pool)
    if mesh is None:
        check_finite("x_pool", x_pool)
    check_finite("x_labeled", x_labeled)
    check_same_length(x_labeled=x_labeled, y_labeled=y_labeled)
    if np.shape(x_labeled)[1:] != np.shape(x_pool)[1:] and np.shape(x_labeled)[0] > 0:
        raise ValueError(
            f"x_labeled rows have shape {np.shape(x_labeled)[1:]} but x_pool rows have "
            f"shape {np.shape(x_pool)[1:]}"
        )
    least = 1 if task == "regression" else 2
    if num_classes is None:
        num_classes = _model_outputs(model, x_pool)
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < least:
        raise ValueError(f"num_classes must be an integer >= {least}, got {num_classes!r}")
    y = np.asarray(y_labeled)
    if task == "regression":
        if y.dtype.kind not in "fiub" or y.shape[1:] not in ((), (int(num_classes),)):
            raise ValueError(f"y_labeled must be real regression targets [L] or [L, {num_classes}], "
                             f"got {y.dtype} {y.shape}")
        check_finite("y_labeled", y)
    else:
        check_labels("y_labeled", y, num_classes)
    if memory_bytes is not None and (isinstance(memory_bytes, bool) or not isinstance(memory_bytes, (int, np.integer))
                                     or memory_bytes < 1):
        raise ValueError(f"memory_bytes must be a positive integer (bytes) or None, got {memory_bytes!r}")
    return Context(model, x_labeled, y.astype(np.float32 if task == "regression" else np.int32), x_pool,
                   int(num_classes), state, round, mesh, None if memory_bytes is None else int(memory_bytes), task)


def _model_outputs(model: Model, x_pool: Any) -> int:
    """The model's number of logits on ``x_pool``'s rows (shape inference, no FLOPs), or
    a ``ValueError`` saying the model does not take rows of that shape."""
    if not isinstance(model, Model):
        raise ValueError(
            f"model must be a jaxal.model.Model (adapt a Flax module with jaxal.model.from_linen or from_nnx), "
            f"got {type(model).__name__}"
        )
    try:
        return _num_classes(model, np.asarray(x_pool[:1]))
    except Exception as e:  # flax's shape errors come from deep inside the module: say what they mean
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(
            f"the model does not accept x_pool rows of shape {tuple(np.shape(x_pool)[1:])} "
            f"({type(e).__name__}: {first}); were its params built for inputs of another shape?"
        ) from None


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
    mesh: Any = None,
    memory_bytes: int | None = None,
    task: str = "classification",
    **options: Any,
) -> Any:
    """Pick ``budget`` pool indices with a strategy given by name or as a function.

    Args:
      strategy: a registered name (:func:`names` lists them; ``jaxal.strategies``'
        module docstring says what each does) or a strategy function.
      key: a ``jax.random`` key (``jax.random.key(0)``); the same key, the same picks.
      model: the trained :class:`~jaxal.model.Model` (``jaxal.model.from_linen`` /
        ``from_nnx`` adapt a Flax module and its variables).
      x_labeled: ``[L, ...]`` inputs already labeled (``L`` may be 0 for strategies
        that do not use them).
      y_labeled: ``[L]`` integer class labels in ``[0, num_classes)`` (regression:
        real targets ``[L]`` or ``[L, D]``).
      x_pool: ``[U, ...]`` unlabeled candidates, rows shaped like ``x_labeled``'s.
      budget: how many to pick, ``1 <= budget <= U``.
      num_classes: the number of classes ``C``; default: the model's number of
        outputs. When given it must equal the model's number of outputs.
      state: a stateful strategy's state from the previous round (ALBL), else ``None``.
      return_query: return the whole :class:`Query` (``indices``, diagnostics
        ``info``, new ``state``) instead of the indices.
      mesh: spread the pool over a device mesh (:func:`jaxal.pool.pool_mesh`; every
        device of every process); ``None``: one device. The same key picks the same
        indices on any number of devices. On a mesh ``x_pool`` may also be a memory map
        (``np.load(path, mmap_mode="r")``) or a TFDS ``data_source``: it is read chunk by chunk.
      memory_bytes: bound on what the strategy caches for the whole pool (features,
        logits); ``ValueError`` with the size asked when it does not fit.
      task: ``"classification"`` or ``"regression"`` (a model with ``D`` real outputs
        trained with squared loss); a strategy that does not serve it is refused.
      **options: the strategy's options (:func:`option_names` lists them; see the
        strategy function's docstring, e.g. ``help(jaxal.strategies.crc.crc)``).
        Unknown names and ill-typed values raise ``ValueError`` before any work.

    Returns:
      A ``[budget]`` int64 array of distinct indices into ``x_pool`` (or the full
      :class:`Query` with ``return_query=True``).

    Raises:
      ValueError: bad input, naming the argument: key, shapes, labels, budget,
        ``num_classes``, options, or a model that does not accept ``x_pool``'s rows.
    """
    check_key("key", key)
    if isinstance(strategy, str):
        check_options(strategy, options, task=task)  # names and types first: no model work for a typo
    fn = get(strategy) if isinstance(strategy, str) else strategy
    outputs = _model_outputs(model, x_pool)  # also: does the model take these rows at all?
    if num_classes is not None and not isinstance(num_classes, bool) and num_classes != outputs:
        raise ValueError(
            f"num_classes={num_classes} but the model has {outputs} outputs (logits); pass the model's number of "
            "classes, or leave num_classes out to use it"
        )
    ctx = make_context(  # num_classes is the outputs found above: the model is not traced again
        model, x_labeled=x_labeled, y_labeled=y_labeled, x_pool=x_pool,
        num_classes=outputs if num_classes is None else num_classes, state=state, mesh=mesh,
        memory_bytes=memory_bytes, task=task,
    )
    budget = check_budget(budget, int(np.shape(x_pool)[0]))
    if isinstance(strategy, str):
        check_options(strategy, options, budget=budget, model=ctx.model)
    q = as_query(fn(key, ctx, budget, **options), budget, int(np.shape(x_pool)[0]), getattr(fn, "__name__", "strategy"))
    return q if return_query else q.indices


def on_mesh(ctx: Context, row_fn: Callable[..., Any], *args: Any, chunk_rows: int = 4096,
            what: str = "the pool's outputs", row_index: bool = False) -> Any:
    """``row_fn(*args, xb)`` over every pool row on ``ctx.mesh``: a :class:`jaxal.pool.Sharded`
    of row outputs, streamed from ``ctx.x_pool`` and bounded by ``ctx.memory_bytes``."""
    return pool.map_rows(row_fn, ctx.x_pool, ctx.mesh, *args, chunk_rows=chunk_rows,
                         memory_bytes=ctx.memory_bytes, what=what, row_index=row_index)


def top_k_on_mesh(key: jax.Array, ctx: Context, budget: int, row_score: Callable[..., Any], *args: Any,
                  chunk_rows: int = 4096, row_index: bool = False, batch: str = "topk",
                  beta: float = 1.0) -> np.ndarray:
    """The ``budget`` pool rows with the largest ``row_score(*args, xb) [b]``, scored on
    ``ctx.mesh`` and ranked by :func:`top_k_indices` with ``key``.

    The scores (4 bytes a row, 4 MB for 10⁶ rows) come to every host for the ranking, so
    ties are broken by the very draw of the single-device path: a mesh of any size, one
    device, and ``mesh=None`` pick the same indices whenever the scores are the same.
    """
    s = on_mesh(ctx, row_score, *args, chunk_rows=chunk_rows, what="the pool's scores", row_index=row_index)
    check_finite("the pool's scores", s.data)
    return pick(pool.to_host(s.data)[: s.n], budget, key, batch, beta)


def pick(scores: Any, budget: int, key: jax.Array, batch: str = "topk", beta: float = 1.0) -> np.ndarray:
    """The batch a single-point score strategy returns: the ``budget`` largest ``scores``
    (``batch="topk"``, :func:`top_k_indices`), or a stochastic batch drawn without
    replacement with probabilities ``∝ s^β`` (``"power"``), ``∝ exp(β s)``
    (``"softmax"``) or ``∝ rank^−β`` (``"softrank"``): :mod:`jaxal.ops.stochastic_batch`.

    Top-``B`` of a score fills a batch with near-copies when the pool has them; sampling
    spreads it at the cost of some of the score's preference (Kirsch et al., 2023).
    """
    check_choice("batch", batch, BATCH_MODES)
    if batch == "topk":
        return top_k_indices(scores, budget, key)
    return stochastic_batch(key, scores, budget, batch, beta)


def batch_options(options: Mapping[str, Any]) -> None:
    """Check ``batch`` / ``beta`` (the stochastic-batch options of a score strategy)."""
    beta = options.get("beta", 1.0)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0 (the stochastic batch's temperature), got {beta!r}")
    if "beta" in options and options.get("batch", "topk") == "topk":
        raise ValueError("beta is the temperature of a stochastic batch: give it with batch=power, softmax or "
                         "softrank (batch=topk has no temperature)")


def top_k_indices(scores: Any, k: int, key: jax.Array | None = None) -> np.ndarray:
    """Indices of the ``k`` largest scores; exact ties broken uniformly at random.

    The same answer as sorting every score by ``(−score, tie)`` with ``tie`` uniform
    draws from ``key`` (index order without a key), in ``O(N)``: a partition finds the
    ``k``-th score and only the rows at or above it are sorted (a pool of 10⁶ takes
    ~20 ms, a full sort ~200 ms). NaN ranks last.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    neg = -s
    tie = host_rng(key).random(s.shape) if key is not None else None
    if 0 < k < s.shape[0]:
        kth = np.partition(neg, k - 1)[k - 1]  # NaN sorts last here as in a full sort
        sel = np.flatnonzero(neg <= kth) if not np.isnan(kth) else np.arange(s.shape[0])
    else:
        sel = np.arange(s.shape[0])
    if tie is None:
        order = sel[np.argsort(neg[sel], kind="stable")]
    else:
        order = sel[np.lexsort((tie[sel], neg[sel]))]
    return order[:k].astype(np.int64)
