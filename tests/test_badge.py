"""BADGE: factored distances, k-means++ sampling law, edge cases, registry use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import linear_head, tiny_mlp
from scipy import stats

import jaxal
from jaxal.ops.kmeanspp import (
    _seed,
    d2_probabilities,
    kmeanspp,
    kmeanspp_factored,
    min_sqdist_to_centres,
)
from jaxal.strategies.badge import badge_factors, gradient_embedding


@pytest.fixture(scope="module")
def tiny():
    x = jax.random.normal(jax.random.key(0), (40, 4))
    return tiny_mlp(6, d_in=4), np.asarray(x)


def _outer_embeddings(a, h, bias):
    """Explicit g_x = a_x ⊗ [h_x, 1] (float64), the thing the fast path avoids."""
    a, h = np.asarray(a, np.float64), np.asarray(h, np.float64)
    ht = np.concatenate([h, np.ones((h.shape[0], 1))], 1) if bias else h
    return np.einsum("nc,nd->ncd", a, ht).reshape(a.shape[0], -1)


@pytest.mark.parametrize("bias", [True, False])
def test_fast_distances_equal_grad_embedding_distances(tiny, bias):
    model, x = tiny
    assert model.dense_head
    g = np.asarray(gradient_embedding(model, x, bias=bias), np.float64)
    a, h = badge_factors(model, x)
    assert g.shape[1] == 3 * (6 + int(bias))
    for c in (0, 7, 23):
        brute = np.sum((g - g[c]) ** 2, axis=1)
        fast = np.asarray(min_sqdist_to_centres((a, h), [c], offsets=(0.0, float(bias))))
        np.testing.assert_allclose(fast, brute, rtol=2e-4, atol=1e-6)


def test_general_path_on_nondense_head_matches_dense_equivalent(tiny):
    # A head written as a plain function is not flagged dense: the grad path must give
    # the same embedding norms as the outer-product formula.
    model, x = tiny
    plain = jaxal.from_functions(lambda p, xb: model.features(p, xb), linear_head, model.params)
    assert not plain.dense_head
    g = np.asarray(gradient_embedding(plain, x), np.float64)
    a, h = badge_factors(model, x)
    np.testing.assert_allclose(g @ g.T, _outer_embeddings(a, h, True) @ _outer_embeddings(a, h, True).T,
                               rtol=1e-4, atol=1e-6)
    idx = jaxal.select("badge", jax.random.key(3), plain, x_labeled=x[:0], y_labeled=np.zeros(0, int),
                       x_pool=x, budget=12)
    assert len(set(idx.tolist())) == 12


@pytest.mark.parametrize("fast,first", [(True, "max_norm"), (False, "uniform")])
def test_select_unique_indices_from_pool(tiny, fast, first):
    model, x = tiny
    for budget in (5, 40):
        idx = jaxal.select("badge", jax.random.key(budget), model, x_labeled=x[:2], y_labeled=np.array([0, 1]),
                           x_pool=x, budget=budget, fast=fast, first=first)
        assert idx.shape == (budget,) and len(set(idx.tolist())) == budget
        assert idx.min() >= 0 and idx.max() < 40


def test_max_norm_first_centre():
    rng = np.random.default_rng(0)
    a, h = rng.normal(size=(30, 3)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32)
    g = _outer_embeddings(a, h, True)
    assert kmeanspp_factored(jax.random.key(0), a, h, 3)[0] == np.argmax(np.sum(g**2, 1))


def test_all_certain_falls_back_to_uniform_without_duplicates():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(20, 4)).astype(np.float32)
    a = np.zeros((20, 3), np.float32)  # every prediction certain: every embedding is 0
    idx = kmeanspp_factored(jax.random.key(0), a, h, 20)
    assert sorted(idx.tolist()) == list(range(20))
    # uniform fallback: the second pick is not always the same point
    seconds = {int(kmeanspp_factored(jax.random.key(s), a, h, 2)[1]) for s in range(12)}
    assert len(seconds) > 3
    # three distinct embeddings, duplicated: after 3 picks ΣD² = 0, still no duplicate
    a3 = np.repeat(rng.normal(size=(3, 3)), 5, axis=0).astype(np.float32)
    h3 = np.repeat(rng.normal(size=(3, 4)), 5, axis=0).astype(np.float32)
    idx = kmeanspp_factored(jax.random.key(2), a3, h3, 9)
    assert len(set(idx.tolist())) == 9
    assert len({i // 5 for i in idx[:3].tolist()}) == 3  # the 3 distinct groups come first


def test_d2_sampling_frequencies_chi_square():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 3)).astype(np.float32)
    h = rng.normal(size=(6, 4)).astype(np.float32)
    a[4] *= 0.05  # a point near the origin: a phantom centre at 0 would change its odds
    g = _outer_embeddings(a, h, True)
    c0 = int(np.argmax(np.sum(g**2, 1)))
    d2 = np.sum((g - g[c0]) ** 2, 1)
    expected_p = d2 / d2.sum()
    n = 20000
    keys = jax.random.split(jax.random.key(7), n)
    fs = (jnp.asarray(a), jnp.asarray(h))
    picks = np.asarray(jax.vmap(lambda k: _seed(k, fs, (0.0, 1.0), 2, "max_norm"))(keys))[:, :2]
    assert np.all(picks[:, 0] == c0) and np.all(picks[:, 1] != c0)
    counts = np.bincount(picks[:, 1], minlength=6)
    mask = expected_p > 0
    assert stats.chisquare(counts[mask], n * expected_p[mask]).pvalue > 1e-3
    np.testing.assert_allclose(np.asarray(d2_probabilities(fs, [c0], offsets=(0, 1))), expected_p, atol=1e-5)


def test_bfloat16_probabilities_close_to_float32():
    rng = np.random.default_rng(3)
    p = jax.nn.softmax(jnp.asarray(rng.normal(size=(500, 10)) * 2), axis=-1)
    a = p - jax.nn.one_hot(jnp.argmax(p, 1), 10)
    h = jnp.asarray(rng.normal(size=(500, 32)), jnp.float32)
    centres = kmeanspp_factored(jax.random.key(0), a, h, 20, dtype="bfloat16")
    assert len(set(centres.tolist())) == 20
    p32 = np.asarray(d2_probabilities((a, h), centres, offsets=(0, 1)))
    p16 = np.asarray(d2_probabilities((a, h), centres, offsets=(0, 1), dtype="bfloat16"))
    assert 0.5 * np.abs(p32 - p16).sum() < 1e-2


def test_plain_kmeanspp_matches_brute_force_law():
    x = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [10.0, 0.0]], np.float32)
    keys = jax.random.split(jax.random.key(0), 4000)
    picks = np.asarray(jax.vmap(lambda k: _seed(k, (jnp.asarray(x),), (0.0,), 2, "max_norm"))(keys))[:, :2]
    assert np.all(picks[:, 0] == 3)
    d2 = np.sum((x - x[3]) ** 2, 1)
    freq = np.bincount(picks[:, 1], minlength=4) / 4000
    np.testing.assert_allclose(freq, d2 / d2.sum(), atol=0.03)
    assert kmeanspp(jax.random.key(0), x, 4).shape == (4,)


def test_bad_input():
    a = np.zeros((5, 2), np.float32)
    h = np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match="budget"):
        kmeanspp_factored(jax.random.key(0), a, h, 6)
    h_nan = h.copy()
    h_nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kmeanspp_factored(jax.random.key(0), a, h_nan, 2)
    with pytest.raises(ValueError, match="first"):
        kmeanspp_factored(jax.random.key(0), a, h, 2, first="origin")
    with pytest.raises(ValueError, match="dtype"):
        kmeanspp_factored(jax.random.key(0), a, h, 2, dtype="float16")
