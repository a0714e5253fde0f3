"""ALBL, active learning by learning (Hsu & Lin, 2015): an EXP4.P bandit over strategies.

Each expert i (a registered strategy) advises a query distribution ξ_i over the K
remaining pool points: ``"random"`` advises uniform; any other expert advises a point
mass on its highest-ranked remaining pick (its own order of ``budget`` picks). With
weights w and a uniform floor p_min the query distribution is

    p_j = (1 − K·p_min) Σ_i (w_i / Σw) ξ_i(j) + p_min,
    p_min = min(sqrt(ln N / (K·T)), max_floor / K)          (N experts, horizon T)

(the EXP4.P value sqrt(ln N/(K T)) needs K·p_min ≤ 1, false for pools larger than the
horizon, hence the cap ``max_floor`` on the total floor mass).

Reward (importance-weighted training accuracy): after the next training, with every
point ALBL has queried so far (x_τ, y_τ) drawn with probability q_τ,

    r = (1 / (n·T)) Σ_τ (1/q_τ) 1[f(x_τ) = y_τ],      n = |L₀| + |U₀|,

an unbiased estimate of the accuracy over the whole data set per query.

EXP4.P update (Beygelzimer et al., 2011), for each queried point j with its p_j, p_min and K:

    ŷ_i = r ξ_i(j) / p_j,    v̂_i = Σ_{j'} ξ_i(j') / p_{j'},
    w_i ← w_i · exp( (p_min / 2) (ŷ_i + v̂_i sqrt(ln(N/δ) / (K·T))) ).

Batch adaptation: a round draws ``budget`` points one at a time without replacement
(p renormalised over the K points still available, experts advise their best remaining
point). The reward is observed one round later (after the loop trains on the batch) and
the update above is applied once per point of that batch, with the same r. The loop
appends each round's picks, in order, to ``x_labeled``; the state remembers the row
count at query time, so the picks are rows ``n_before .. n_before + B − 1``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from jaxal.model import predict_logits
from jaxal.strategies.base import Context, Query, get, register
from jaxal.validation import check_positive

__all__ = ["ALBLState", "exp4p_update", "iw_accuracy", "albl"]

DEFAULT_EXPERTS = ("random", "entropy", "margin", "coreset")


class ALBLState(NamedTuple):
    """Bandit state carried across rounds (plain numpy, checkpointable).

    Attributes:
      experts: names of the strategies, in weight order.
      log_weights: ``[N]`` log w_i (log space: no overflow over long runs).
      positions: ``[Q]`` rows of ``x_labeled`` holding the points ALBL has queried.
      q: ``[Q]`` probability with which each of those points was drawn.
      advice: ``[B, N]`` ξ_i(j_b) for last round's picks (pending update).
      prob: ``[B]`` p_{j_b} of last round's picks.
      vhat: ``[B, N]`` v̂_i at each of last round's draws.
      p_min: ``[B]`` floor used at each draw.
      k_arms: ``[B]`` number of available points K at each draw.
      n_before: rows of ``x_labeled`` when last round queried.
      n_total: n = |L₀| + |U₀| (IW-ACC normaliser).
      horizon: T, the total number of queries the bandit plans for.
      last_reward: the reward of the latest update (``nan`` before the first).
    """

    experts: tuple
    log_weights: np.ndarray
    positions: np.ndarray
    q: np.ndarray
    advice: np.ndarray
    prob: np.ndarray
    vhat: np.ndarray
    p_min: np.ndarray
    k_arms: np.ndarray
    n_before: int
    n_total: int
    horizon: int
    last_reward: float


def exp4p_update(
    log_weights: np.ndarray,
    advice: np.ndarray,
    prob: float,
    vhat: np.ndarray,
    reward: float,
    p_min: float,
    k_arms: int,
    horizon: int,
    delta: float,
) -> np.ndarray:
    """One EXP4.P update of ``log_weights [N]`` for a point drawn with probability ``prob``
    that expert i advised with probability ``advice[i]`` (formula in the module docstring)."""
    n = log_weights.shape[0]
    yhat = reward * np.asarray(advice, np.float64) / prob
    bonus = np.asarray(vhat, np.float64) * np.sqrt(np.log(n / delta) / (k_arms * horizon))
    return log_weights + 0.5 * p_min * (yhat + bonus)


def iw_accuracy(correct: np.ndarray, q: np.ndarray, n_total: int, horizon: int) -> float:
    """IW-ACC = Σ_τ (1/q_τ) correct_τ / (n·T)."""
    return float(np.sum(np.asarray(correct, np.float64) / np.asarray(q, np.float64)) / (n_total * horizon))


def _init_state(experts: Sequence[str], n_total: int, horizon: int) -> ALBLState:
    n = len(experts)
    empty = np.zeros(0)
    return ALBLState(
        tuple(experts), np.zeros(n), np.zeros(0, np.int64), empty, np.zeros((0, n)), empty,
        np.zeros((0, n)), empty, np.zeros(0, np.int64), -1, int(n_total), int(horizon), float("nan"),
    )


def _observe(ctx: Context, state: ALBLState, delta: float) -> ALBLState:
    """Credit last round's picks with the IW-ACC of the current model."""
    b = state.prob.shape[0]
    n_now = int(np.shape(ctx.x_labeled)[0])
    if n_now != state.n_before + b:
        raise ValueError(
            f"ALBL state expects x_labeled to hold {state.n_before} + {b} rows (last round's picks "
            f"appended in order), got {n_now}"
        )
    positions = np.concatenate([state.positions, state.n_before + np.arange(b)])
    q = np.concatenate([state.q, state.prob])
    logits = predict_logits(ctx.model, np.asarray(ctx.x_labeled)[positions])
    correct = np.asarray(np.argmax(np.asarray(logits), axis=-1) == np.asarray(ctx.y_labeled)[positions])
    r = iw_accuracy(correct, q, state.n_total, state.horizon)
    lw = state.log_weights
    for t in range(b):
        lw = exp4p_update(lw, state.advice[t], state.prob[t], state.vhat[t], r, state.p_min[t],
                          int(state.k_arms[t]), state.horizon, delta)
    return state._replace(log_weights=lw - lw.max(), positions=positions, q=q, last_reward=r)


def _check(options: dict, *, budget: int, model: Any = None, sequential: bool = False) -> None:
    experts = tuple(options.get("strategies", DEFAULT_EXPERTS))
    if not experts:
        raise ValueError("strategies is empty: ALBL needs at least one expert")
    if "albl" in experts:
        raise ValueError("strategies must not contain 'albl' itself")
    for name in experts:
        get(name)  # ValueError listing the valid names
    check_positive(options, "horizon")
    for name in ("delta", "max_floor"):
        if name in options and not 0 < options[name] < 1:
            raise ValueError(f"{name} must be in (0, 1), got {options[name]}")


@register("albl", check=_check)
def albl(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    strategies: Sequence[str] = DEFAULT_EXPERTS,
    horizon: int | None = None,
    delta: float = 0.1,
    max_floor: float = 0.1,
) -> Query:
    """ALBL batch: ``budget`` draws from the EXP4.P mixture of ``strategies``.

    Options:
      strategies: registered strategy names (the experts); ``"random"`` advises uniform.
      horizon: T, planned total number of queries (default ``20 * budget``: 20 rounds).
      delta: EXP4.P confidence parameter δ.
      max_floor: cap on the uniform floor's total mass K·p_min.
    """
    pool_size = int(np.shape(ctx.x_pool)[0])
    state = ctx.state
    if state is None:
        experts = tuple(strategies)
        if not experts:
            raise ValueError("strategies is empty: ALBL needs at least one expert")
        if "albl" in experts:
            raise ValueError("strategies must not contain 'albl' itself")
        for name in experts:
            get(name)  # ValueError for unknown names
        n_total = int(np.shape(ctx.x_labeled)[0]) + pool_size
        state = _init_state(experts, n_total, horizon if horizon is not None else 20 * budget)
    elif not isinstance(state, ALBLState):
        raise ValueError(f"ctx.state must be an ALBLState from a previous ALBL round, got {type(state).__name__}")
    else:
        state = _observe(ctx, state, delta)

    n_exp = len(state.experts)
    keys = jax.random.split(key, n_exp + 1)
    rankings = {}
    for i, name in enumerate(state.experts):
        if name != "random":
            res = get(name)(keys[i], ctx, budget)
            rankings[i] = np.asarray(res.indices if isinstance(res, Query) else res).reshape(-1)
    rng = np.random.default_rng(int(jax.random.randint(keys[-1], (), 0, np.iinfo(np.int32).max)))
    w = np.exp(state.log_weights - state.log_weights.max())
    w = w / w.sum()
    available = np.ones(pool_size, bool)
    picks, advice, prob, vhat, p_mins, k_arms = [], [], [], [], [], []
    for b in range(budget):
        k = pool_size - b
        p_min = min(np.sqrt(np.log(n_exp) / (k * state.horizon)), max_floor / k)
        xi = np.zeros((n_exp, pool_size))
        for i in range(n_exp):
            if i in rankings:
                xi[i, rankings[i][available[rankings[i]]][0]] = 1.0
            else:
                xi[i, available] = 1.0 / k
        p = np.where(available, (1.0 - k * p_min) * (w @ xi) + p_min, 0.0)
        p = p / p.sum()  # exact in theory; removes rounding drift
        j = int(rng.choice(pool_size, p=p))
        picks.append(j)
        advice.append(xi[:, j])
        prob.append(p[j])
        # xi / p, with 0 where p = 0: with one non-random expert ln(K) = 0 gives no uniform
        # floor, and the points no expert advises then have p = 0 and xi = 0
        q_av, xi_av = p[available], xi[:, available]
        vhat.append(np.divide(xi_av, q_av, out=np.zeros_like(xi_av), where=q_av > 0).sum(axis=1))
        p_mins.append(p_min)
        k_arms.append(k)
        available[j] = False
    new_state = state._replace(
        advice=np.asarray(advice), prob=np.asarray(prob), vhat=np.asarray(vhat), p_min=np.asarray(p_mins),
        k_arms=np.asarray(k_arms, np.int64), n_before=int(np.shape(ctx.x_labeled)[0]),
    )
    reward = None if np.isnan(state.last_reward) else float(state.last_reward)  # None (JSON null) before the first
    info = {"weights": w.tolist(), "experts": list(state.experts), "reward": reward}
    return Query(indices=np.asarray(picks, np.int64), info=info, state=new_state)
