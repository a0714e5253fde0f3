"""Coreset, TypiClust, BALD, EGL against brute force / hand computations; registry use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import TinyMLP

import jaxal
from jaxal.strategies.bald import bald_from_probs, bald_scores
from jaxal.strategies.coreset import k_center_greedy, min_sqdist_to_set
from jaxal.strategies.egl import egl_scores
from jaxal.strategies.typiclust import typicality, typiclust_select


@pytest.fixture(scope="module")
def setup():
    net = TinyMLP(8, dropout_rate=0.5)  # tanh features, dropout when train=True
    x = np.asarray(jax.random.normal(jax.random.key(0), (30, 4)))
    variables = net.init(jax.random.key(1), x[:1])
    model = jaxal.from_linen(net, variables, head="head", inference_kwargs={"train": False},
                             stochastic_kwargs={"train": True})
    return net, variables, model, x


def _entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=-1)


# ---------------------------------------------------------------- coreset
def test_min_sqdist_chunked_matches_brute_force():
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(11, 3)), rng.normal(size=(7, 3))
    brute = ((x[:, None] - z[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(np.asarray(min_sqdist_to_set(x, z, chunk=3)), brute, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_labeled", [4, 0])
def test_coreset_picks_farthest_point_each_step(n_labeled):
    rng = np.random.default_rng(1)
    pool, lab = rng.normal(size=(25, 3)), rng.normal(size=(n_labeled, 3))
    picks = k_center_greedy(jax.random.key(0), pool, lab, 6)
    centres = list(lab)
    for t, p in enumerate(picks):
        if t == 0 and n_labeled == 0:
            centres.append(pool[p])  # first pick with no labeled point is uniform
            continue
        d = np.min(((pool[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        d[picks[:t]] = -1
        assert p == np.argmax(d)
        centres.append(pool[p])
    assert len(set(picks.tolist())) == 6


def test_coreset_with_duplicates_of_labeled_points_has_no_duplicates():
    lab = np.eye(3)
    pool = np.repeat(lab, 3, axis=0)  # every pool point sits on a labeled point
    picks = k_center_greedy(jax.random.key(0), pool, lab, 9)
    assert sorted(picks.tolist()) == list(range(9))


# ---------------------------------------------------------------- BALD
def test_bald_from_probs_by_hand():
    p = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]])  # [T=2, n=2, C=2]
    expected = _entropy(p.mean(0)) - _entropy(p).mean(0)
    np.testing.assert_allclose(np.asarray(bald_from_probs(jnp.asarray(p))), expected, rtol=1e-6)
    assert expected[1] == pytest.approx(0.0) and expected[0] > 0.3


def test_bald_mc_dropout_and_ensemble_by_hand(setup):
    net, variables, model, x = setup
    key = jax.random.key(5)
    scores = np.asarray(bald_scores(model, x, key, num_samples=4, batch_size=64))
    keys = jax.random.split(key, 4)
    probs = np.stack([np.asarray(jax.nn.softmax(model.logits(x, jax.random.fold_in(k, 0)))) for k in keys])
    np.testing.assert_allclose(scores, _entropy(probs.mean(0)) - _entropy(probs).mean(0), rtol=1e-4, atol=1e-6)
    assert scores.max() > 1e-3  # dropout makes the passes disagree

    members = [jax.tree_util.tree_map(lambda v, s=s: v * s, model.params) for s in (0.5, 1.0, 2.0)]
    ens = np.asarray(bald_scores(model, x, params_ensemble=members, batch_size=7))  # chunked
    probs = np.stack([np.asarray(jax.nn.softmax(model.apply(m, x))) for m in members])
    np.testing.assert_allclose(ens, _entropy(probs.mean(0)) - _entropy(probs).mean(0), rtol=1e-4, atol=1e-6)


def test_bald_needs_stochastic_model_or_ensemble(setup):
    net, variables, _, x = setup
    det = jaxal.from_linen(net, variables, head="head", inference_kwargs={"train": False})
    with pytest.raises(ValueError, match="stochastic"):
        bald_scores(det, x, jax.random.key(0))
    with pytest.raises(ValueError, match="params_ensemble"):
        bald_scores(det, x, params_ensemble=[])


# ---------------------------------------------------------------- EGL
def test_egl_closed_form_equals_grad_path_and_brute_force(setup):
    _, _, model, x = setup
    fast = np.asarray(egl_scores(model, x[:4], fast=True))
    general = np.asarray(egl_scores(model, x[:4], fast=False))
    h = model.embed(jnp.asarray(x[:4]))
    brute = []
    for hx in h:
        logits = model.head(model.params["head"], hx[None])[0]
        p = np.asarray(jax.nn.softmax(logits))
        total = 0.0
        for y in range(3):
            g = jax.grad(lambda ph: -jax.nn.log_softmax(model.head(ph, hx[None])[0])[y])(model.params["head"])
            total += p[y] * sum(float(jnp.sum(v**2)) for v in jax.tree_util.tree_leaves(g))
        brute.append(total)
    np.testing.assert_allclose(fast, brute, rtol=1e-4)
    np.testing.assert_allclose(general, brute, rtol=1e-4)


# ---------------------------------------------------------------- TypiClust
def test_typicality_brute_force():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(9, 2))
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    expected = 1 / np.sort(d, axis=1)[:, 1:4].mean(1)
    np.testing.assert_allclose(typicality(f, k=3), expected, rtol=1e-6)


def test_typiclust_largest_uncovered_cluster_first():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    sizes = [10, 6, 3]
    blobs = [c + rng.normal(size=(s, 2)) for c, s in zip(centres, sizes)]
    pool = np.concatenate(blobs)
    blob_of = np.repeat(np.arange(3), sizes)
    labeled = centres[:1] + 0.01  # covers the largest blob
    picks = typiclust_select(0, labeled, pool, 2)
    assert blob_of[picks].tolist() == [1, 2]
    # each pick is the most typical point of its blob (typicality within the cluster)
    for p in picks:
        members = np.flatnonzero(blob_of == blob_of[p])
        assert p == members[np.argmax(typicality(pool[members], 20))]


# ---------------------------------------------------------------- registry
@pytest.mark.parametrize("name", ["badge", "coreset", "typiclust", "bald", "egl", "albl"])
def test_every_strategy_through_select(setup, name):
    _, _, model, x = setup
    q = jaxal.select(name, jax.random.key(9), model, x_labeled=x[:5], y_labeled=np.array([0, 1, 2, 0, 1]),
                     x_pool=x[5:], budget=6, return_query=True)
    idx = np.asarray(q.indices)
    assert idx.shape == (6,) and len(set(idx.tolist())) == 6 and idx.min() >= 0 and idx.max() < 25
    with pytest.raises(ValueError, match="budget"):
        jaxal.select(name, jax.random.key(9), model, x_labeled=x[:5], y_labeled=np.array([0, 1, 2, 0, 1]),
                     x_pool=x[5:], budget=26)


def test_lazy_k_center_equals_the_plain_loop_and_a_brute_force():
    """The blocked lazy greedy (one device) against the per-step loop (sharded pools) and
    a NumPy brute force: the same picks, with and without labeled points, duplicates,
    and padded rows (n_valid) that must never be picked."""
    from jaxal.ops import kcenter

    rng = np.random.default_rng(3)
    for trial in range(6):
        n, d = int(rng.integers(100, 900)), int(rng.integers(2, 20))
        x = rng.normal(size=(n, d)).astype(np.float32)
        if trial % 3 == 1:
            x[: n // 3] = x[0]  # a third of the pool is one point
        xl = rng.normal(size=(int(rng.integers(0, 12)) if trial % 2 else 0, d)).astype(np.float32)
        n_valid = n - 17 if trial % 2 else n
        budget = int(rng.integers(5, 120))
        key = jax.random.key(trial)
        m = kcenter.min_sqdist_to_set(jnp.asarray(x), jnp.asarray(xl))
        lazy = np.asarray(kcenter._lazy_greedy(key, jnp.asarray(x), m, np.int32(n_valid), budget))
        plain = np.asarray(kcenter._greedy(key, jnp.asarray(x), m, np.int32(n_valid), budget))
        np.testing.assert_array_equal(lazy, plain)
        assert lazy.max() < n_valid and len(set(lazy.tolist())) == budget
        # brute force from the second pick on (the first is uniform when nothing is labeled)
        md = (np.min(((x[:, None] - xl[None]) ** 2).sum(-1), 1) if len(xl) else np.full(n, np.inf))
        md = np.where(np.arange(n) < n_valid, md, -np.inf)
        md = np.minimum(md, ((x - x[lazy[0]]) ** 2).sum(-1))
        md[lazy[0]] = -np.inf
        for c in lazy[1:]:
            assert md[c] >= md.max() * (1 - 1e-4) - 1e-5, (trial, c)
            md = np.minimum(md, ((x - x[c]) ** 2).sum(-1))
            md[c] = -np.inf
