"""NTK look-ahead strategies: ``mlmoc``, ``emoc``, ``eer``, ``flip_rate``.

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

Sequential mode: each strategy has ``.sequential(key, ctx, budget, oracle, **options)``
(used by the loop's ``--sequential``) which asks ``oracle(i)`` for the true label after
every pick and conditions on it (rank-1, ``O(|S|²)``), with no retraining in between.
After ``k`` labels the reference is the network's outputs moved by the ``k`` earlier
exact kernel updates (``f + Σ increments``, plus the offset when
``reference="network"``), so each pick measures change against the prediction that
already knows the earlier answers.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.lookahead import core
from jaxal.lookahead.baselines import one_step_sgd_scores
from jaxal.lookahead.sequential import KERNELS as KERNEL_APPROXIMATIONS, init_from_model
from jaxal.strategies.base import Context, Query, register
from jaxal.strategies.common import top_k_indices
from jaxal.validation import check_choice

__all__ = ["mlmoc", "emoc", "eer", "flip_rate"]

BATCH_MODES = ("topk", "greedy")
KERNELS = tuple(KERNEL_APPROXIMATIONS) + ("sgd",)
REFERENCES = ("network", "linearised")


def _eval_rows(key: jax.Array, pool_size: int, budget: int, eval_size: int | None) -> np.ndarray:
    """Pool rows forming ``S``: all, or a sorted uniform subset of size ``eval_size``."""
    if eval_size is None or eval_size >= pool_size:
        return np.arange(pool_size)
    if isinstance(eval_size, bool) or not isinstance(eval_size, (int, np.integer)) or eval_size < budget:
        raise ValueError(f"eval_size must be an integer >= budget ({budget}), got {eval_size!r}")
    return np.sort(np.asarray(jax.random.choice(key, pool_size, (int(eval_size),), replace=False)))


def _state(ctx: Context, rows: np.ndarray, options: dict) -> tuple[core.LookaheadState, core.LookaheadInfo]:
    x_eval = np.asarray(ctx.x_pool)[rows]
    return init_from_model(ctx.model, ctx.x_labeled, ctx.y_labeled, x_eval, **options)


def _with_reference(state: core.LookaheadState, reference: str) -> core.LookaheadState:
    """``reference="linearised"``: measure changes against ``f_lin`` (drop the offset)."""
    check_choice("reference", reference, REFERENCES)
    if reference == "network":
        return state
    return state._replace(offset=jnp.zeros_like(state.offset))


def _info(objective: str, rows: np.ndarray, linfo: core.LookaheadInfo | None, **extra: Any) -> dict:
    info = {"objective": objective, "eval_size": int(rows.shape[0]), **extra}
    if linfo is not None:
        info.update(jitter=float(linfo.jitter), relative_jitter=float(linfo.relative_jitter),
                    variance_floor=float(linfo.variance_floor))
    return info


def _make(objective: str) -> Callable:
    def strategy(
        key: jax.Array,
        ctx: Context,
        budget: int,
        *,
        eval_size: int | None = None,
        batch: str = "topk",
        kernel: str = "empirical",
        contraction: str = "single_logit",
        subset: Any = "all",
        probability: str = "softmax",
        reference: str = "network",
        learning_rate: float | None = None,
        depth: int | None = None,
        jitter: float | None = None,
        variance_floor: float | None = None,
        chunk_size: int | None = None,
    ) -> Query:
        check_choice("batch", batch, BATCH_MODES)
        check_choice("kernel", kernel, KERNELS)
        check_choice("probability", probability, core.PROBABILITY_MAPS)
        check_choice("reference", reference, REFERENCES)
        key_eval, key_tie = jax.random.split(key)
        rows = _eval_rows(key_eval, int(np.shape(ctx.x_pool)[0]), budget, eval_size)
        if kernel == "sgd":
            if batch != "topk":
                raise ValueError("batch='greedy' needs a kernel look-ahead; kernel='sgd' supports batch='topk' only")
            s = one_step_sgd_scores(ctx.model, np.asarray(ctx.x_pool)[rows], objective=objective,
                                    learning_rate=learning_rate, probability=probability, chunk_size=chunk_size)
            picks = top_k_indices(s, budget, key_tie)
            return Query(rows[picks], _info(objective, rows, None, kernel=kernel, batch=batch))
        state, linfo = _state(ctx, rows, dict(kernel=kernel, contraction=contraction, subset=subset, depth=depth,
                                               jitter=jitter, variance_floor=variance_floor))
        state = _with_reference(state, reference)
        if batch == "topk":
            s, clamped = core.scores(state, objective, probability, chunk_size)
            picks, n_clamped = top_k_indices(s, budget, key_tie), int(np.sum(np.asarray(clamped)))
        else:
            picks, _, per_pick = core.greedy_batch(state, budget, objective, probability, chunk_size)
            picks, n_clamped = np.asarray(picks), int(per_pick[0])
        return Query(rows[np.asarray(picks)], _info(objective, rows, linfo, num_clamped=n_clamped, kernel=kernel,
                                                    contraction=contraction, batch=batch))

    def sequential(
        key: jax.Array,
        ctx: Context,
        budget: int,
        oracle: Callable[[int], int],
        *,
        eval_size: int | None = None,
        kernel: str = "empirical",
        contraction: str = "single_logit",
        subset: Any = "all",
        probability: str = "softmax",
        depth: int | None = None,
        jitter: float | None = None,
        variance_floor: float | None = None,
        chunk_size: int | None = None,
        batch: str = "topk",
        reference: str = "network",
        learning_rate: float | None = None,
    ) -> Query:
        """Pick ``budget`` points one at a time, conditioning on ``oracle(pool_row)`` after each.

        Same options as the batch strategy; ``batch`` and ``learning_rate`` are accepted
        (so one option set serves both modes) but unused: picks are sequential and the
        update is the exact kernel rule (``kernel='sgd'`` is not available here).
        """
        check_choice("batch", batch, BATCH_MODES)
        check_choice("kernel", kernel, KERNEL_APPROXIMATIONS)
        rows = _eval_rows(key, int(np.shape(ctx.x_pool)[0]), budget, eval_size)
        state, linfo = _state(ctx, rows, dict(kernel=kernel, contraction=contraction, subset=subset, depth=depth,
                                               jitter=jitter, variance_floor=variance_floor))
        state = _with_reference(state, reference)
        picks, labels = [], []
        for _ in range(budget):
            i = int(jnp.argmax(core.scores(state, objective, probability, chunk_size)[0]))
            y = int(oracle(int(rows[i])))
            state = core.add(state, i, y)
            picks.append(i)
            labels.append(y)
        return Query(rows[np.asarray(picks)], _info(objective, rows, linfo, num_clamped=int(linfo.num_clamped),
                                                    kernel=kernel, contraction=contraction, batch="sequential",
                                                    labels=labels))

    strategy.__name__ = strategy.__qualname__ = objective
    strategy.__doc__ = (
        f"NTK look-ahead strategy ``{objective}`` (see :mod:`jaxal.strategies.lookahead`).\n\n"
        "Options: ``eval_size`` (random subset of the pool used as S and candidates), "
        "``batch`` ('topk' | 'greedy'), ``kernel`` ('empirical' | 'infinite' | 'sgd'), "
        "``contraction`` ('single_logit' | 'sum_logits' | 'trace' | 'full': |S|C×|S|C, small S only), "
        "``subset`` ('all' | 'head' | callable), ``probability`` ('softmax' | 'simplex'), "
        "``reference`` ('network': change measured against the network's outputs f, offset included; "
        "'linearised': against f_lin, the candidate's own term only), "
        "``learning_rate`` (kernel='sgd'; default: the step that fits the candidate's residual), "
        "``depth`` (kernel='infinite*'), ``jitter``, "
        "``variance_floor``, ``chunk_size``. ``Query.info`` reports the jitter and the number of "
        "clamped candidates."
    )
    sequential.__name__ = sequential.__qualname__ = f"{objective}_sequential"
    strategy.sequential = sequential
    return register(objective)(strategy)


mlmoc = _make("mlmoc")
emoc = _make("emoc")
eer = _make("eer")
flip_rate = _make("flip_rate")
