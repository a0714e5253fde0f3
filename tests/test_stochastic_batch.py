"""Stochastic batches (jaxal.ops.stochastic_batch) against the textbook maps and the
Plackett-Luce probabilities of sampling without replacement."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from jaxal.ops.stochastic_batch import log_weights, stochastic_batch

SCORES = np.array([0.1, 0.5, 1.0, 2.0, 0.4])


@pytest.mark.parametrize("mode, beta, expected", [
    ("softmax", 2.0, np.exp(2.0 * SCORES)),
    ("power", 1.5, SCORES ** 1.5),
    ("softrank", 1.0, 1.0 / np.array([5.0, 3.0, 2.0, 1.0, 4.0])),  # ranks of 0.1, 0.5, 1.0, 2.0, 0.4
])
def test_log_weights_are_the_textbook_maps(mode, beta, expected):
    p = np.exp(log_weights(SCORES, mode, beta))
    np.testing.assert_allclose(p / p.sum(), expected / expected.sum(), rtol=1e-12)


def _plackett_luce_pairs(p: np.ndarray) -> dict[tuple[int, int], float]:
    """P(first pick i, second pick j) when sampling without replacement ∝ p."""
    p = p / p.sum()
    return {(i, j): p[i] * p[j] / (1.0 - p[i]) for i, j in itertools.permutations(range(len(p)), 2)}


@pytest.mark.parametrize("mode, beta", [("power", 1.0), ("softmax", 1.0), ("softrank", 2.0)])
def test_ordered_pairs_follow_sampling_without_replacement(mode, beta):
    n = 2500
    counts: dict[tuple[int, int], int] = {}
    for k in range(n):
        i, j = stochastic_batch(jax.random.key(k), SCORES, 2, mode, beta)
        counts[(int(i), int(j))] = counts.get((int(i), int(j)), 0) + 1
    expected = _plackett_luce_pairs(np.exp(log_weights(SCORES, mode, beta)))
    for pair, prob in expected.items():
        # a binomial count: within 4.5 standard deviations (plus one count)
        assert abs(counts.get(pair, 0) - n * prob) <= 4.5 * np.sqrt(n * prob * (1 - prob)) + 1, (pair, prob)


def test_limits_and_masked_rows():
    rng = np.random.default_rng(0)
    s = rng.random(200)
    s[[3, 17]] = -np.inf
    top = np.argsort(-s)[:10]
    cold = stochastic_batch(jax.random.key(1), s, 10, "softmax", 1e6)
    assert list(cold) == list(top)  # β → ∞: top-B in score order
    for seed in range(20):
        picks = stochastic_batch(jax.random.key(seed), s, 50, "power", 0.0)
        assert len(set(picks.tolist())) == 50 and not {3, 17} & set(picks.tolist())
    assert list(stochastic_batch(jax.random.key(5), s, 7)) == list(stochastic_batch(jax.random.key(5), s, 7))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="mode"):
        stochastic_batch(jax.random.key(0), SCORES, 2, "hot")
    with pytest.raises(ValueError, match="scores >= 0"):
        stochastic_batch(jax.random.key(0), SCORES - 1.0, 2, "power")
    with pytest.raises(ValueError, match="only 3 rows"):
        stochastic_batch(jax.random.key(0), [1.0, 2.0, 3.0, -np.inf], 4, "softmax")
    with pytest.raises(ValueError, match="NaN"):
        stochastic_batch(jax.random.key(0), [1.0, np.nan], 1)
    with pytest.raises(ValueError, match="beta"):
        stochastic_batch(jax.random.key(0), SCORES, 1, "power", -1.0)


# --------------------------------------------------------------------------- as a strategy option


def _tiny_context():
    import jaxal.models as models_lib
    from jaxal.training.train import init_variables

    module = models_lib.create("mlp", 3, input_shape=(4,), widths=(8,), dropout_rate=0.3)
    variables = init_variables(jax.random.key(0), module, np.zeros((1, 4), np.float32))
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(40, 4)).astype(np.float32)
    return models_lib.as_model(module, variables), pool


@pytest.mark.parametrize("strategy, mode, beta", [("entropy", "power", 2.0), ("margin", "softrank", 1.0),
                                                   ("least_confidence", "softmax", 5.0), ("bald", "power", 1.0)])
def test_score_strategies_sample_their_batch(strategy, mode, beta):
    """``batch=MODE`` draws the batch from the strategy's own scores, computed here
    independently with NumPy (BALD from the same dropout masks)."""
    from jaxal.model import predict_logits
    from jaxal.strategies import select
    from jaxal.strategies.bald import bald_scores

    model, pool = _tiny_context()
    key = jax.random.key(3)
    common = dict(x_labeled=pool[:0], y_labeled=np.zeros(0, np.int32), x_pool=pool, budget=6)
    picks = select(strategy, key, model, batch=mode, beta=beta, **common)
    if strategy == "bald":
        k_mc, key = jax.random.split(key)
        scores = np.maximum(np.asarray(bald_scores(model, pool, k_mc, num_samples=20, batch_size=1024)), 0.0)
    else:
        z = np.asarray(predict_logits(model, pool), np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        top2 = np.sort(p, 1)[:, ::-1][:, :2]
        scores = {"entropy": -(p * np.log(p)).sum(1), "margin": top2[:, 1] - top2[:, 0],
                  "least_confidence": 1.0 - p.max(1)}[strategy]
    np.testing.assert_array_equal(picks, stochastic_batch(key, scores, 6, mode, beta))
    assert not np.array_equal(np.sort(picks), np.sort(select(strategy, key, model, **common)))  # not top-k


def test_batch_options_are_checked():
    from jaxal.strategies import select

    model, pool = _tiny_context()
    common = dict(x_labeled=pool[:0], y_labeled=np.zeros(0, np.int32), x_pool=pool, budget=3)
    for options, message in [({"batch": "gumbel"}, "must be one of"), ({"batch": "power", "beta": -1.0}, "beta"),
                             ({"beta": 2.0}, "batch=topk has no temperature")]:
        with pytest.raises(ValueError, match=message):
            select("entropy", jax.random.key(0), model, **common, **options)
