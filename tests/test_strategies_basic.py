"""Registry, input validation and the uncertainty baselines, checked by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import tiny_mlp

import jaxal
from jaxal.strategies import uncertainty
from jaxal.strategies.base import Query, register


@pytest.fixture(scope="module")
def setup():
    x = jax.random.normal(jax.random.key(0), (30, 5))
    m = tiny_mlp(4, d_in=5, activation=None)  # a linear body
    return m, x


def _select(name, setup, budget=5, **kw):
    m, x = setup
    defaults = dict(x_labeled=x[:4], y_labeled=np.array([0, 1, 2, 0]), x_pool=x[4:], budget=budget)
    defaults.update(kw)
    return jaxal.select(name, jax.random.key(7), m, **defaults)


def test_scores_match_textbook_formulas():
    p = jnp.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(uncertainty.least_confidence_scores(p), [0.5, 0.0, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(uncertainty.margin_scores(p), [-0.2, -1.0, 0.0], atol=1e-6)
    expected = [-(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)), 0.0, np.log(3)]
    np.testing.assert_allclose(uncertainty.entropy_scores(p), expected, rtol=1e-6)


@pytest.mark.parametrize("name,score", [("entropy", uncertainty.entropy_scores),
                                        ("margin", uncertainty.margin_scores),
                                        ("least_confidence", uncertainty.least_confidence_scores)])
def test_uncertainty_strategies_pick_the_top_scores(setup, name, score):
    m, x = setup
    idx = _select(name, setup, budget=5)
    s = np.asarray(score(jax.nn.softmax(m.logits(x[4:]))))
    assert set(idx) == set(np.argsort(-s)[:5])


def test_random_is_distinct_and_in_range(setup):
    idx = _select("random", setup, budget=26)
    assert sorted(idx) == list(range(26))


def test_registry_lists_and_rejects_names(setup):
    assert {"random", "entropy", "margin", "least_confidence"} <= set(jaxal.strategy_names())
    with pytest.raises(ValueError, match="valid: .*entropy"):
        _select("entropi", setup)


@pytest.mark.parametrize("kw,match", [
    (dict(budget=27), "larger than the pool"),
    (dict(budget=0), "positive"),
    (dict(budget=2.5), "integer"),
    (dict(y_labeled=np.array([0, 1, 3, 0])), r"outside \[0, 3\)"),
    (dict(y_labeled=np.array([0, 1, 2])), "mismatched lengths"),
    (dict(x_pool=np.full((5, 5), np.nan)), "x_pool contains 25 NaN"),
    (dict(x_pool=np.zeros((0, 5))), "x_pool is empty"),
    (dict(x_pool=np.zeros((5, 4))), "shape"),
])
def test_bad_inputs_are_named(setup, kw, match):
    with pytest.raises(ValueError, match=match):
        _select("entropy", setup, **kw)


def test_returned_queries_are_checked(setup):
    @register("_dup_for_test")
    def dup(key, ctx, budget):
        return Query(indices=np.zeros(budget, dtype=int))

    with pytest.raises(RuntimeError, match="duplicate"):
        _select("_dup_for_test", setup, budget=3)


def test_design_feel_from_the_top_level_import(setup):
    """The package's promise: a batch, the sequential annotator loop and a kernel from ``import jaxal``."""
    m, x = setup
    xl, yl, xu = x[:4], np.array([0, 1, 2, 0]), x[4:]
    batch = jaxal.select("mlmoc", jax.random.key(0), m, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=3)
    seq = jaxal.lookahead.Sequential(m, xl, yl, x_pool=xu)
    i = seq.best()
    assert i == batch[0]  # the sequential first pick is the top-scored candidate
    seq = seq.add(i, 1)
    assert seq.queried[i] and seq.best() != i
    k = jaxal.ntk.kernel(m, xu[:3], xu[:2], contraction="trace", subset="head")
    h = np.asarray(m.embed(xu[:3])), np.asarray(m.embed(xu[:2]))
    np.testing.assert_allclose(k, 3 * (h[0] @ h[1].T + 1), rtol=1e-5)  # C (h·h' + 1)


def test_top_k_indices_equals_a_full_sort_with_random_tie_keys():
    """The partition-based top-k returns exactly the prefix of the full (−score, tie) sort,
    ties, NaN and inf included."""
    from jaxal.ops.random import host_rng
    from jaxal.strategies.base import top_k_indices

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        k = int(rng.integers(1, n + 1))
        s = rng.integers(0, 4, n).astype(float)
        s[rng.random(n) < 0.15] = np.nan
        s[rng.random(n) < 0.15] = np.inf
        key = jax.random.key(trial) if trial % 2 else None
        if key is None:
            want = np.argsort(-s, kind="stable")[:k]
        else:
            want = np.lexsort((host_rng(key).random(n), -s))[:k]
        np.testing.assert_array_equal(top_k_indices(s, k, key), want)


def test_logit_forms_of_the_scores_match_float64_softmax():
    """The strategies score logits directly (one exp per logit); the textbook forms on a
    float64 softmax agree, tied top classes and extreme logits included."""
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(500, 7)) * 4).astype(np.float32)
    logits[0] = [3, 3, 0, 0, 0, 0, 0]  # tied top two: margin 0
    logits[1] = [80, -80, 0, 0, 0, 0, 0]  # certain
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    top = np.sort(p, axis=1)
    want = {
        "least_confidence_from_logits": 1 - top[:, -1],
        "margin_from_logits": -(top[:, -1] - top[:, -2]),
        "entropy_from_logits": -(p * np.log(np.where(p > 0, p, 1))).sum(axis=1),
    }
    for name, expected in want.items():
        got = np.asarray(jax.jit(getattr(uncertainty, name))(jnp.asarray(logits)))
        np.testing.assert_allclose(got, expected, atol=3e-6, err_msg=name)
