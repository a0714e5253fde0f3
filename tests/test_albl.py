"""ALBL: EXP4.P update checked by hand over two rounds, state bookkeeping, mixture law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import tiny_mlp

import jaxal
from jaxal.strategies.albl import ALBLState, exp4p_update


@pytest.fixture(scope="module")
def tiny():
    x = np.asarray(jax.random.normal(jax.random.key(0), (24, 4)))
    model = tiny_mlp(5, d_in=4)
    y = np.asarray(jax.random.randint(jax.random.key(2), (24,), 0, 3))
    return model, x, y


def test_exp4p_update_single_step_by_hand():
    lw = np.log(np.array([1.0, 2.0]))
    out = exp4p_update(lw, advice=np.array([1.0, 0.25]), prob=0.5, vhat=np.array([2.0, 4.0]), reward=0.3,
                       p_min=0.1, k_arms=4, horizon=10, delta=0.1)
    bonus = np.sqrt(np.log(2 / 0.1) / 40)
    expected = np.array([1.0 * np.exp(0.05 * (0.3 * 1.0 / 0.5 + 2.0 * bonus)),
                         2.0 * np.exp(0.05 * (0.3 * 0.25 / 0.5 + 4.0 * bonus))])
    np.testing.assert_allclose(np.exp(out), expected, rtol=1e-12)


def test_two_rounds_weights_follow_update_rule(tiny):
    model, x, y = tiny
    xl, yl, pool, ypool = x[:4], y[:4], x[4:], y[4:]
    experts = ("random", "entropy", "margin")
    q0 = jaxal.select("albl", jax.random.key(0), model, x_labeled=xl, y_labeled=yl, x_pool=pool, budget=3,
                      return_query=True, strategies=experts, horizon=12)
    s0 = q0.state
    assert isinstance(s0, ALBLState) and s0.experts == experts
    np.testing.assert_allclose(s0.log_weights, 0.0)
    assert s0.n_before == 4 and s0.n_total == 24 and s0.prob.shape == (3,)
    # the draws followed the mixture: p_j = (1 − K p_min) mean_i ξ_i(j) + p_min over K remaining
    for b in range(3):
        k = 20 - b
        p_min = min(np.sqrt(np.log(3) / (k * 12)), 0.1 / k)
        assert s0.p_min[b] == pytest.approx(p_min) and s0.k_arms[b] == k
        assert s0.prob[b] == pytest.approx((1 - k * p_min) * s0.advice[b].mean() + p_min)
        assert s0.advice[b, 0] == pytest.approx(1 / k)  # random expert: uniform

    picks = np.asarray(q0.indices)
    xl1 = np.concatenate([xl, pool[picks]])
    yl1 = np.concatenate([yl, ypool[picks]])
    rest = np.setdiff1d(np.arange(20), picks)
    q1 = jaxal.select("albl", jax.random.key(1), model, x_labeled=xl1, y_labeled=yl1, x_pool=pool[rest], budget=3,
                      return_query=True, state=s0)
    s1 = q1.state
    # reward by hand: IW-ACC on the 3 queried points
    pred = np.argmax(np.asarray(model.logits(jnp.asarray(pool[picks]))), axis=1)
    reward = np.sum((pred == ypool[picks]) / s0.prob) / (24 * 12)
    assert s1.last_reward == pytest.approx(reward)
    w = np.ones(3)
    for b in range(3):
        bonus = s0.vhat[b] * np.sqrt(np.log(3 / 0.1) / (s0.k_arms[b] * 12))
        w = w * np.exp(s0.p_min[b] / 2 * (reward * s0.advice[b] / s0.prob[b] + bonus))
    np.testing.assert_allclose(np.exp(s1.log_weights), w / w.max(), rtol=1e-10)
    np.testing.assert_array_equal(s1.positions, [4, 5, 6])
    np.testing.assert_allclose(s1.q, s0.prob)
    assert s1.n_before == 7

    with pytest.raises(ValueError, match="x_labeled"):  # picks not appended
        jaxal.select("albl", jax.random.key(1), model, x_labeled=xl, y_labeled=yl, x_pool=pool[rest], budget=3,
                     state=s0)


def test_random_only_is_uniform_and_bad_options(tiny):
    model, x, y = tiny
    q = jaxal.select("albl", jax.random.key(0), model, x_labeled=x[:4], y_labeled=y[:4], x_pool=x[4:], budget=4,
                     return_query=True, strategies=("random",))
    np.testing.assert_allclose(q.state.prob, [1 / 20, 1 / 19, 1 / 18, 1 / 17])
    with pytest.raises(ValueError, match="unknown strategy"):
        jaxal.select("albl", jax.random.key(0), model, x_labeled=x[:4], y_labeled=y[:4], x_pool=x[4:], budget=2,
                     strategies=("random", "nope"))
