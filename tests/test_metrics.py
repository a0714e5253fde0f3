"""AUBC and the penalty matrix on results whose answer is known."""

import numpy as np
import pytest
from scipy import stats

from jaxal.experiment import stats as metrics


def test_aubc_by_hand():
    assert metrics.aubc([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    # Trapezoid: ((0.5+0.7)/2*10 + (0.7+0.9)/2*10) / 20 = 0.7 ; uneven spacing moves it.
    assert metrics.aubc_trapezoid([10, 20, 30], [0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert metrics.aubc_trapezoid([10, 20, 40], [0.5, 0.7, 0.9]) == pytest.approx(
        ((0.5 + 0.7) / 2 * 10 + (0.7 + 0.9) / 2 * 20) / 30)
    with pytest.raises(ValueError):
        metrics.aubc([])
    with pytest.raises(ValueError):
        metrics.aubc_trapezoid([1], [0.1])


def test_mean_ci_matches_t_interval():
    v = [0.6, 0.62, 0.65, 0.61, 0.63]
    m, h = metrics.mean_ci(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert m == pytest.approx(np.mean(v)) and h == pytest.approx((hi - lo) / 2)


def _synthetic(seed=0, n_seeds=6):
    """'good' beats random by 0.05 ± noise at every budget; 'same' equals random."""
    rng = np.random.default_rng(seed)
    sizes = [10 + 5 * r for r in range(40)]
    base = {n: 1 - 0.9 * np.exp(-n / 40) for n in sizes}
    curves = {"random": {}, "good": {}, "same": {}}
    for s in range(n_seeds):
        shift = rng.normal(0, 0.02)  # seed effect shared across strategies (paired)
        curves["random"][s] = {n: base[n] + shift + rng.normal(0, 0.002) for n in sizes}
        curves["good"][s] = {n: base[n] + shift + 0.05 + rng.normal(0, 0.002) for n in sizes}
        curves["same"][s] = {n: base[n] + shift + rng.normal(0, 0.002) for n in sizes}
    return curves


def test_penalty_budgets_follow_doubling_rule_and_stop_at_saturation():
    curves = _synthetic()
    b = metrics.penalty_budgets(curves["random"], initial=10, batch=5)
    assert b[:4] == [15, 20, 30, 50]
    mean = lambda n: np.mean([curves["random"][s][n] for s in curves["random"]])  # noqa: E731
    final = mean(205)
    assert mean(b[-1]) >= 0.99 * final and all(mean(n) < 0.99 * final for n in b[:-1])


def test_penalty_matrix_known_winner():
    pm = metrics.penalty_matrix(_synthetic(), initial=10, batch=5)
    i = {n: k for k, n in enumerate(pm.strategies)}
    assert pm.matrix[i["good"], i["random"]] == pytest.approx(1.0)
    assert pm.matrix[i["good"], i["same"]] == pytest.approx(1.0)
    assert pm.matrix[i["random"], i["good"]] == 0.0
    # 'good' is never beaten; random and same are beaten by good at every budget.
    assert pm.column_means[i["good"]] == 0.0
    assert pm.column_means[i["random"]] >= 0.5
    assert np.all(pm.pvalues[i["good"], i["random"]] < 0.05)


def test_penalty_matrix_needs_reference_and_two_strategies():
    c = _synthetic()
    with pytest.raises(ValueError, match="reference"):
        metrics.penalty_matrix({"a": c["good"], "b": c["same"]}, initial=10, batch=5)
    with pytest.raises(ValueError, match="two strategies"):
        metrics.penalty_matrix({"random": c["random"]}, initial=10, batch=5)
