"""The expected-model-change family, scored by NTK look-ahead: ``mlmoc``, ``emoc``, ``eer``, ``flip_rate``.

Each scores every candidate by how the (linearised) network would change if that
candidate were labeled and the network retrained (Mohamadi et al. 2022), using the
empirical NTK around the trained weights; see :mod:`jaxal.lookahead`.

Which sign is best:

- ``mlmoc``: ``Σ_{x∈S} ‖f(x) − f⁺_lin(x)‖₂`` with the pseudo-label ``argmax f(x')``:
  largest change is best (the paper's eq. 13).
- ``emoc``: the same change in expectation over ``y' ~ p(f(x'))``: largest is best.
- ``eer``: expected mean entropy of ``p(f⁺_lin(x))`` over ``S``: *lowest* is best
  (the strategy scores its negation).
- ``flip_rate``: fraction of ``S`` whose argmax changes under the pseudo-label: largest
  is best (the authors' code default).

``p`` is the probability map of the ``probability`` option: ``"softmax"`` (default) or
``"simplex"`` (Euclidean projection onto the simplex, as the authors' code does for
squared-loss outputs).

What the look-ahead models: gradient descent continued *from the current network* on
``L ∪ {x'}`` with the squared loss, to convergence. Run it under that protocol
(``jaxal run --protocol lookahead``: squared loss, warm start, training to a small
residual, BatchNorm frozen); cross-entropy models and cold restarts work, but then
the scores model a retraining the loop never does.

Which reference a score measures change against (option ``reference``):

- ``"network"`` (default, the paper's eq. 13): ``f⁺_lin(x) − f(x)``. This includes the
  candidate-independent offset ``c(x) = f_lin(x) − f(x) = k(x, L) K_LL⁻¹ R``, the
  kernel's fit of the residuals ``R`` still left on ``L``. Under the look-ahead
  protocol ``R`` is small and so is ``c``; after a loose fit ``c`` can dominate every
  score.
- ``"linearised"``: ``f⁺_lin(x) − f_lin(x)``, the candidate's own term only;
  pseudo-labels are then ``argmax f_lin(x')``.

Sequential mode: each strategy is registered with a sequential twin
(``mlmoc_sequential(key, ctx, budget, oracle, **options)``, found through
:func:`jaxal.strategies.base.sequential_mode`; the loop's ``--sequential``) which asks ``oracle(i)`` for the true label after
every pick and conditions on it (rank-1, ``O(|S|²)``), with no retraining in between.
After ``k`` labels the reference is the network's outputs moved by the ``k`` earlier
exact kernel updates (``f + Σ increments``, plus the offset when
``reference="network"``), so each pick measures change against the prediction that
already knows the earlier answers.

Options (one set, :class:`LookaheadOptions`, shared by the four strategies and their
sequential twins): ``eval_size`` (random subset of the pool used as S and candidates),
``batch`` ('topk' | 'greedy'), ``approximation`` ('empirical' | 'infinite' |
'infinite_ntk_param' | 'sgd'), ``contraction`` ('single_logit' | 'sum_logits' |
'trace' | 'full': |S|C×|S|C, small S only), ``subset`` ('all' | 'head' | callable: the
parameters the empirical NTK differentiates), ``probability`` ('softmax' | 'simplex'),
``reference`` ('network' | 'linearised'), ``learning_rate`` (approximation='sgd';
default: the step that fits the candidate's residual), ``depth``
(approximation='infinite_ntk_param'), ``jitter``, ``variance_floor``, ``chunk_size``.
``Query.info`` reports the jitter and the number of clamped candidates.

On a mesh (``select(..., mesh=jaxal.pool.pool_mesh(), memory_bytes=...)``, or
``Context.mesh``; a one-device mesh works too) the candidates are the *whole pool*, not
``S``: the pool is streamed chunk by chunk and sharded over the devices, ``S`` is a
uniform subset of ``eval_size`` rows (default ``min(pool, 2000)``; it need not hold the
budget), and every row is scored against ``S`` from its kernel rows ``K(x, L)``,
``K(x, S)``, ``k(x, x)`` alone (:mod:`jaxal.lookahead.pool_scores`): a candidate in ``S``
gets exactly the single-device path's score. ``memory_bytes`` bounds each device's
working set (the replicated ``[L, L]`` factor and ``[S, L]`` rows plus one chunk) and
sets the chunk (``chunk_size`` caps it). Only ``batch='topk'``,
``approximation='empirical'`` and scalar contractions run there; the others are refused
with the single-device alternative named. The sequential twins ignore the mesh.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, get_type_hints

import jax
import jax.numpy as jnp
import numpy as np

from jaxal import pool
from jaxal.interrupt import check as check_interrupt
from jaxal.lookahead import core
from jaxal.lookahead.baselines import one_step_sgd_scores
from jaxal.lookahead.from_model import APPROXIMATIONS as KERNEL_APPROXIMATIONS
from jaxal.lookahead.from_model import CONTRACTIONS
from jaxal.lookahead.from_model import init_from_model
from jaxal.lookahead.pool_scores import DEFAULT_EVAL_SIZE, SCALAR_CONTRACTIONS, pool_scores
from jaxal.ops.random import split
from jaxal.strategies.base import Context, Query, register, top_k_indices
from jaxal.validation import check_choice, check_positive

__all__ = ["mlmoc", "emoc", "eer", "flip_rate", "mlmoc_sequential", "emoc_sequential", "eer_sequential",
           "flip_rate_sequential", "LookaheadOptions"]

BATCH_MODES = ("topk", "greedy")
APPROXIMATIONS = tuple(KERNEL_APPROXIMATIONS) + ("sgd",)
REFERENCES = ("network", "linearised")


class LookaheadOptions(NamedTuple):
    """The options every look-ahead strategy takes (see the module docstring)."""

    eval_size: int | None = None
    batch: str = "topk"
    approximation: str = "empirical"
    contraction: str = "single_logit"
    subset: Any = "all"
    probability: str = "softmax"
    reference: str = "network"
    learning_rate: float | None = None
    depth: int | None = None
    jitter: float | None = None
    variance_floor: float | None = None
    chunk_size: int | None = None


# What the registry accepts (names and types): the options plus ``kernel``, the 0.1 name
# of ``approximation``.
_ACCEPTED_OPTIONS = NamedTuple("LookaheadAcceptedOptions",
                               [*get_type_hints(LookaheadOptions).items(), ("kernel", str | None)])


def _options(options: dict) -> LookaheadOptions:
    """Checked options; the 0.1 name ``kernel=`` of ``approximation`` is accepted with a warning."""
    options = dict(options)
    if "kernel" in options:
        warnings.warn("the look-ahead option kernel= is now approximation= (kernel= goes in 0.3)",
                      DeprecationWarning, stacklevel=3)
        options.setdefault("approximation", options.pop("kernel"))
    unknown = sorted(set(options) - set(LookaheadOptions._fields))
    if unknown:
        raise TypeError(f"unknown look-ahead option(s) {unknown}; valid: {', '.join(LookaheadOptions._fields)}")
    o = LookaheadOptions(**options)
    check_choice("batch", o.batch, BATCH_MODES)
    check_choice("approximation", o.approximation, APPROXIMATIONS)
    check_choice("probability", o.probability, core.PROBABILITY_MAPS)
    check_choice("reference", o.reference, REFERENCES)
    return o


def _check(options: dict, *, budget: int, model: Any = None, sequential: bool = False) -> None:
    """The look-ahead options' types and values, before any training (see ``register(check=)``)."""
    with warnings.catch_warnings():  # the deprecation warning is given once, at the query
        warnings.simplefilter("ignore", DeprecationWarning)
        o = _options(options)
    check_choice("contraction", o.contraction, CONTRACTIONS)
    check_positive(options, "eval_size", "depth", "chunk_size")
    if o.eval_size is not None and o.eval_size < budget:
        raise ValueError(f"eval_size={o.eval_size} is smaller than budget={budget}: it must be >= budget")
    if sequential:
        check_choice("approximation", o.approximation, KERNEL_APPROXIMATIONS)
    elif o.approximation == "sgd" and o.batch != "topk":
        raise ValueError("batch='greedy' needs a kernel look-ahead; approximation='sgd' supports batch='topk' only")


def _eval_rows(key: jax.Array, pool_size: int, budget: int, eval_size: int | None) -> np.ndarray:
    """Pool rows forming ``S``: all, or a sorted uniform subset of size ``eval_size``."""
    if eval_size is None or eval_size >= pool_size:
        return np.arange(pool_size)
    if isinstance(eval_size, bool) or not isinstance(eval_size, (int, np.integer)) or eval_size < budget:
        raise ValueError(f"eval_size must be an integer >= budget ({budget}), got {eval_size!r}")
    return np.sort(np.asarray(jax.random.choice(key, pool_size, (int(eval_size),), replace=False)))


def _state(ctx: Context, rows: np.ndarray, o: LookaheadOptions) -> tuple[core.LookaheadState, core.LookaheadInfo]:
    """The look-ahead state on ``S = x_pool[rows]``, referenced as ``o.reference`` asks."""
    x_eval = np.asarray(ctx.x_pool)[rows]
    state, info = init_from_model(ctx.model, ctx.x_labeled, ctx.y_labeled, x_eval, approximation=o.approximation,
                                  contraction=o.contraction, subset=o.subset, depth=o.depth, jitter=o.jitter,
                                  variance_floor=o.variance_floor)
    if o.reference == "linearised":  # measure changes against f_lin: drop the offset
        state = state._replace(offset=jnp.zeros_like(state.offset))
    return state, info


def _info(objective: str, rows: np.ndarray, linfo: core.LookaheadInfo | None, **extra: Any) -> dict:
    info = {"objective": objective, "eval_size": int(rows.shape[0]), **extra}
    if linfo is not None:
        info.update(jitter=float(linfo.jitter), relative_jitter=float(linfo.relative_jitter),
                    jitter_ok=bool(linfo.jitter_ok), variance_floor=float(linfo.variance_floor))
    return info


def _max_score(scores: Any) -> float:
    """The best candidate's score (what the ``output_change`` stopping rule follows); padding
    and added points score ``-inf``, so the max is over real candidates."""
    return float(jnp.max(scores))


def _batch_query(objective: str, key: jax.Array, ctx: Context, budget: int, options: dict) -> Query:
    """Top-``budget`` or greedy batch of one objective (the body of the four strategies)."""
    o = _options(options)
    if ctx.mesh is not None:
        return _pool_query(objective, key, ctx, budget, o)
    key_eval, key_tie = split(key, 2)
    rows = _eval_rows(key_eval, int(np.shape(ctx.x_pool)[0]), budget, o.eval_size)
    if o.approximation == "sgd":
        if o.batch != "topk":
            raise ValueError("batch='greedy' needs a kernel look-ahead; approximation='sgd' supports batch='topk' only")
        s = one_step_sgd_scores(ctx.model, np.asarray(ctx.x_pool)[rows], objective=objective,
                                learning_rate=o.learning_rate, probability=o.probability, chunk_size=o.chunk_size)
        picks = top_k_indices(s, budget, key_tie)
        return Query(rows[picks], _info(objective, rows, None, approximation=o.approximation, batch=o.batch))
    state, linfo = _state(ctx, rows, o)
    s, clamped = core.scores(state, objective, o.probability, o.chunk_size)
    if o.batch == "topk":
        picks, n_clamped = top_k_indices(s, budget, key_tie), int(np.sum(np.asarray(clamped)))
    else:
        picks, _, per_pick = core.greedy_batch(state, budget, objective, o.probability, o.chunk_size)
        picks, n_clamped = np.asarray(picks), int(np.asarray(per_pick)[0])
    return Query(rows[np.asarray(picks)], _info(objective, rows, linfo, num_clamped=n_clamped,
                                                approximation=o.approximation, contraction=o.contraction,
                                                batch=o.batch, max_score=_max_score(s)))


def _pool_query(objective: str, key: jax.Array, ctx: Context, budget: int, o: LookaheadOptions) -> Query:
    """The look-ahead with every pool row a candidate, the pool sharded over ``ctx.mesh``
    (:mod:`jaxal.lookahead.pool_scores`): ``S`` is a uniform subset of ``eval_size`` rows
    (default ``min(pool, 2000)``), scores are ranked by :func:`jaxal.pool.top_k`."""
    if o.batch != "topk":
        raise ValueError(
            f"batch={o.batch!r} is not available on a mesh: the greedy batch conditions an S×S covariance "
            "whose rows are the candidates, while on a mesh every pool row is a candidate; use batch='topk', "
            "or mesh=None (the single-device path) with eval_size for a greedy batch over S"
        )
    if o.approximation != "empirical":
        raise ValueError(
            f"approximation={o.approximation!r} is not available on a mesh (the pool look-ahead scores rows of "
            "the trained network's empirical NTK); use approximation='empirical', or mesh=None"
        )
    if o.contraction not in SCALAR_CONTRACTIONS:
        raise ValueError(
            f"contraction={o.contraction!r} is not available on a mesh: use one of {', '.join(SCALAR_CONTRACTIONS)} "
            "(a scalar kernel used ⊗ I_C), or mesh=None with a small eval_size for 'full'"
        )
    key_eval, key_tie = split(key, 2)
    n = int(np.shape(ctx.x_pool)[0])
    size = min(n, DEFAULT_EVAL_SIZE if o.eval_size is None else int(o.eval_size))
    rows = _eval_rows(key_eval, n, 0, size)  # S need not hold the budget: candidates are the whole pool
    r = pool_scores(ctx.model, ctx.x_labeled, ctx.y_labeled, ctx.x_pool, ctx.mesh, rows, objective=objective,
                    probability=o.probability, reference=o.reference, contraction=o.contraction, subset=o.subset,
                    jitter=o.jitter, variance_floor=o.variance_floor, memory_bytes=ctx.memory_bytes,
                    chunk_rows=o.chunk_size)
    picks = pool.to_host(pool.top_k(r.scores.data, budget, key_tie, n=n)).astype(np.int64)
    return Query(picks, _info(objective, rows, r.info, num_clamped=int(r.info.num_clamped),
                              approximation=o.approximation, contraction=o.contraction, batch=o.batch, path="pool",
                              devices=int(ctx.mesh.size), candidates=n, chunk_rows=int(r.chunk_rows),
                              memory_estimate=int(r.memory), max_score=_max_score(r.scores.data)))


def _sequential_query(objective: str, key: jax.Array, ctx: Context, budget: int,
                      oracle: Callable[[int], int], options: dict) -> Query:
    """Pick ``budget`` points one at a time, conditioning on ``oracle(pool_row)`` after each.

    Same options as the batch strategy; ``batch`` and ``learning_rate`` are accepted
    (so one option set serves both modes) but unused: picks are sequential and the
    update is the exact kernel rule (``approximation='sgd'`` is not available here).
    """
    o = _options(options)
    check_choice("approximation", o.approximation, KERNEL_APPROXIMATIONS)
    rows = _eval_rows(key, int(np.shape(ctx.x_pool)[0]), budget, o.eval_size)
    state, linfo = _state(ctx, rows, o)
    picks, labels = [], []
    for _ in range(budget):
        check_interrupt()
        i = int(np.argmax(np.asarray(core.scores(state, objective, o.probability, o.chunk_size)[0])))
        y = int(oracle(int(rows[i])))
        state = core.add(state, i, y)
        picks.append(i)
        labels.append(y)
    return Query(rows[np.asarray(picks)], _info(objective, rows, linfo, num_clamped=int(linfo.num_clamped),
                                                approximation=o.approximation, contraction=o.contraction,
                                                batch="sequential", labels=labels))


def mlmoc_sequential(key: jax.Array, ctx: Context, budget: int, oracle: Callable[[int], int], **options: Any) -> Query:
    """MLMOC with the annotator in the loop: one pick, one true label, an exact kernel update."""
    return _sequential_query("mlmoc", key, ctx, budget, oracle, options)


def emoc_sequential(key: jax.Array, ctx: Context, budget: int, oracle: Callable[[int], int], **options: Any) -> Query:
    """EMOC with the annotator in the loop (see :func:`mlmoc_sequential`)."""
    return _sequential_query("emoc", key, ctx, budget, oracle, options)


def eer_sequential(key: jax.Array, ctx: Context, budget: int, oracle: Callable[[int], int], **options: Any) -> Query:
    """EER with the annotator in the loop (see :func:`mlmoc_sequential`)."""
    return _sequential_query("eer", key, ctx, budget, oracle, options)


def flip_rate_sequential(key: jax.Array, ctx: Context, budget: int, oracle: Callable[[int], int],
                         **options: Any) -> Query:
    """Flip rate with the annotator in the loop (see :func:`mlmoc_sequential`)."""
    return _sequential_query("flip_rate", key, ctx, budget, oracle, options)


@register("mlmoc", sequential=mlmoc_sequential, options=_ACCEPTED_OPTIONS, check=_check)
def mlmoc(key: jax.Array, ctx: Context, budget: int, **options: Any) -> Query:
    """Maximum linearised model output change under the pseudo-label ``argmax f(x')``: largest first."""
    return _batch_query("mlmoc", key, ctx, budget, options)


@register("emoc", sequential=emoc_sequential, options=_ACCEPTED_OPTIONS, check=_check)
def emoc(key: jax.Array, ctx: Context, budget: int, **options: Any) -> Query:
    """Expected model output change over ``y' ~ p(f(x'))``: largest first."""
    return _batch_query("emoc", key, ctx, budget, options)


@register("eer", sequential=eer_sequential, options=_ACCEPTED_OPTIONS, check=_check)
def eer(key: jax.Array, ctx: Context, budget: int, **options: Any) -> Query:
    """Expected error reduction: lowest expected mean entropy of ``p(f⁺_lin)`` over ``S`` first."""
    return _batch_query("eer", key, ctx, budget, options)


@register("flip_rate", sequential=flip_rate_sequential, options=_ACCEPTED_OPTIONS, check=_check)
def flip_rate(key: jax.Array, ctx: Context, budget: int, **options: Any) -> Query:
    """Fraction of ``S`` whose argmax changes under the pseudo-label: largest first."""
    return _batch_query("flip_rate", key, ctx, budget, options)
