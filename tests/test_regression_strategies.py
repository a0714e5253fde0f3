"""The NTK sketch against jaxal.ntk.kernel, and the regression strategies run through a
Context on a tiny regression MLP (scalar head).

Shapes follow tests/test_kernel_select.py (14 pool rows, 4 labeled, 5 kernel features:
last-layer width 4 plus the bias column, or sketch_dim=5), so the selectors' compiled
loops are shared by the two files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxal
from jaxal.model import embed, predict_logits
from jaxal.ntk import kernel
from jaxal.ntk import sketch as sk
from jaxal.ops import kernel_select as ks
from jaxal.strategies import regression as rs
from jaxal.strategies.base import Context, as_query, check_options

N, L, D_IN, WIDTH = 14, 4, 3, 4
STRATEGIES = ("mc_variance", "ntk_variance", "ntk_emoc", "maxdet", "maxdist", "kmeanspp_features", "lcmd")


def _features(p, x, key=None):
    return jnp.tanh(x @ p["kernel"] + p["bias"])


def _dropout_features(p, x, key=None):
    h = _features(p, x)
    return h if key is None else jnp.where(jax.random.bernoulli(key, 0.7, h.shape), h / 0.7, 0.0)


def _head(p, h):
    return h @ p["kernel"] + p["bias"]


def mlp(width=WIDTH, d_in=D_IN, d_out=1, seed=0, dropout=False):
    """One tanh hidden layer and a Dense head, from plain functions (no Flax init to compile)."""
    rng = np.random.default_rng(seed)
    params = {"body": {"kernel": rng.standard_normal((d_in, width)) / np.sqrt(d_in),
                       "bias": 0.3 * rng.standard_normal(width)},
              "head": {"kernel": rng.standard_normal((width, d_out)) / np.sqrt(width),
                       "bias": 0.3 * rng.standard_normal(d_out)}}
    params = jax.tree_util.tree_map(lambda a: jax.device_put(a.astype(np.float32)), params)
    return jaxal.from_functions(_dropout_features if dropout else _features, _head, params, dense_head=True,
                                stochastic=dropout)


def analytic_ntk(model, x):
    """Θ_cd(x, x') of the one-hidden-layer net in closed form, ``[n, n, D, D]`` (float64)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), model.params)
    a = np.tanh(x @ p["body"]["kernel"] + p["body"]["bias"])  # [n, w]
    g = (1 - a**2)[:, :, None] * p["head"]["kernel"][None]  # ∂f_c/∂pre-activation_h: [n, w, D]
    body = np.einsum("ihc,jhd->ijcd", g, g) * (x @ x.T + 1)[:, :, None, None]
    head = (a @ a.T + 1)[:, :, None, None] * np.eye(p["head"]["kernel"].shape[1])
    return body + head


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x_pool = rng.standard_normal((N, D_IN)).astype(np.float32)
    x_lab = rng.standard_normal((L, D_IN)).astype(np.float32)
    return x_pool, x_lab, rng.standard_normal(L).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return mlp(seed=2)


@pytest.fixture(scope="module")
def ctx(model, data):
    x_pool, x_lab, y = data
    return Context(model, x_lab, y, x_pool, num_classes=1, task="regression")


# --------------------------------------------------------------------------- the sketch


def test_sketch_converges_to_the_exact_ntk_and_is_unbiased(model, data):
    x = data[0]
    exact = np.asarray(kernel(model, x, contraction="trace"), np.float64)
    np.testing.assert_allclose(analytic_ntk(model, x)[:, :, 0, 0], exact, rtol=1e-4, atol=1e-5)
    k = 1024
    phis = [np.asarray(sk.ntk_sketch(model, x, jax.random.key(s), k), np.float64) for s in range(4)]
    assert phis[0].shape == (N, k)
    # the first m columns of a k-sketch, times sqrt(k/m), are the m-sketch
    prefix = np.asarray(sk.ntk_sketch(model, x, jax.random.key(0), 40))
    np.testing.assert_allclose(np.sqrt(k / 40) * phis[0][:, :40], prefix, rtol=1e-5, atol=1e-6)
    errs = [sk.relative_frobenius_error((k / m) * phis[0][:, :m] @ phis[0][:, :m].T, exact) for m in (16, 128, k)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.1, errs
    singles = [sk.relative_frobenius_error(p @ p.T, exact) for p in phis]
    mean_kernel = np.mean([p @ p.T for p in phis], axis=0)  # E over keys: the error shrinks like 1/sqrt(keys)
    assert sk.relative_frobenius_error(mean_kernel, exact) < 0.7 * np.mean(singles)
    assert sk.sketch_error(model, x, jax.random.key(0), k) == pytest.approx(singles[0], rel=1e-5)
    # the exact Jacobian features give the kernel itself
    jac = np.asarray(sk.jacobian_features(model, x), np.float64)
    assert jac.shape == (N, sk.jacobian_size(model, x)) == (N, D_IN * WIDTH + WIDTH + WIDTH + 1)
    np.testing.assert_allclose(jac @ jac.T, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())


def test_sketch_of_several_outputs_trace_and_full(data):
    x = data[0]
    two = mlp(d_out=2, seed=3)
    full = analytic_ntk(two, x.astype(np.float64))  # [n, n, 2, 2]
    trace = np.einsum("ijcc->ij", full)
    phis = [np.asarray(sk.ntk_sketch(two, x, jax.random.key(s), 256), np.float64) for s in range(4)]
    assert phis[0].shape == (N, 256)  # k columns whatever D
    assert sk.relative_frobenius_error(np.mean([p @ p.T for p in phis], axis=0), trace) < 0.08
    phis = [np.asarray(sk.ntk_sketch(two, x, jax.random.key(s), 256, outputs="full"), np.float64) for s in range(4)]
    assert phis[0].shape == (N, 2, 256)  # [n, D, k]
    assert sk.relative_frobenius_error(np.mean([np.einsum("ick,jdk->ijcd", p, p) for p in phis], axis=0), full) < 0.1
    with pytest.raises(ValueError, match="outputs"):
        sk.ntk_sketch(two, x, jax.random.key(0), 8, outputs="mean")


# --------------------------------------------------------------------------- the strategies


def test_every_strategy_returns_distinct_valid_indices(ctx, model, data):
    _, x_lab, y = data
    drop_model = mlp(seed=2, dropout=True)
    options = {"mc_variance": {"num_samples": 4}, "ntk_emoc": {"sketch_dim": 5, "eval_size": 6}}
    for name in STRATEGIES:
        fn = jaxal.strategies.get(name)
        c = ctx._replace(model=drop_model) if name == "mc_variance" else ctx
        opts = options.get(name, {"sketch_dim": 5})
        check_options(name, opts, budget=5, model=c.model)
        for key in (0, 1):
            q = as_query(fn(jax.random.key(key), c, 5, **opts), 5, N, name)
            assert q.indices.shape == (5,)
        if name not in ("mc_variance", "maxdist"):  # budget = the whole pool (k-centre compiles per budget)
            assert sorted(as_query(fn(jax.random.key(2), c, N, **opts), N, N, name).indices) == list(range(N))
    # last-layer features, no labeled rows, and the prior kernel
    empty = ctx._replace(x_labeled=x_lab[:0], y_labeled=y[:0])
    for name in ("maxdet", "lcmd", "kmeanspp_features", "maxdist"):
        fn = jaxal.strategies.get(name)
        as_query(fn(jax.random.key(0), ctx, 5, features="last_layer"), 5, N, name)
        as_query(fn(jax.random.key(0), empty, 5, features="last_layer", posterior=False), 5, N, name)
    # the feature selectors also take classification models; the GP scores do not
    clf = ctx._replace(task="classification")
    as_query(jaxal.strategies.get("lcmd")(jax.random.key(0), clf, 3, features="last_layer"), 3, N, "lcmd")
    for name in ("ntk_variance", "ntk_emoc", "mc_variance"):
        with pytest.raises(ValueError, match="regression"):
            jaxal.strategies.get(name)(jax.random.key(0), clf._replace(model=drop_model), 3)


def test_ntk_variance_is_the_gp_posterior_variance_of_the_features(ctx, model, data):
    x_pool, x_lab, _ = data
    for features, phi in (("last_layer", lambda x: np.c_[np.asarray(embed(model, x)), np.ones(len(x))]),
                          ("ntk", lambda x: np.asarray(sk.jacobian_features(model, x)))):
        fp, fl = phi(x_pool).astype(np.float64), phi(x_lab).astype(np.float64)
        sigma2 = 0.05 * np.mean(np.sum(np.concatenate([fp, fl]) ** 2, axis=1))  # noise relative to the mean diagonal
        kpl, kll = fp @ fl.T, fl @ fl.T
        var = np.sum(fp**2, axis=1) - np.einsum("ij,ji->i", kpl, np.linalg.solve(kll + sigma2 * np.eye(L), kpl.T))
        q = rs.ntk_variance(jax.random.key(0), ctx, 5, features=features, noise=0.05)
        assert list(q.indices) == list(np.argsort(-var)[:5])
        assert q.info["noise_absolute"] == pytest.approx(sigma2, rel=1e-5)
    # ntk_emoc is the closed form of jaxal.ops.kernel_select on the same features
    fp = np.asarray(embed(model, x_pool))
    fl = np.asarray(embed(model, x_lab))
    fp, fl = np.c_[fp, np.ones(N)], np.c_[fl, np.ones(L)]
    q = rs.ntk_emoc(jax.random.key(0), ctx, 4, features="last_layer", noise=0.05, eval_size=N)
    scores = np.asarray(ks.expected_output_change(fp, fl, q.info["noise_absolute"]))
    assert set(q.indices) == set(np.argsort(-scores)[:4])


def test_mc_variance_scores_equal_the_ensemble_variance(ctx, model, data):
    x_pool = data[0]
    rng = np.random.default_rng(5)
    members = [jax.tree_util.tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(a.dtype), model.params)
               for _ in range(3)]
    preds = np.stack([np.asarray(predict_logits(model.replace_params(m), x_pool)) for m in members])  # [T, N, 1]
    want = preds.var(axis=0).sum(axis=1)
    got = rs.mc_variance_scores(model, x_pool, params_ensemble=members, batch_size=8)  # two chunks
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    q = rs.mc_variance(jax.random.key(0), ctx, 4, params_ensemble=members, batch_size=8)
    assert list(q.indices) == list(np.argsort(-want)[:4])


def test_bad_options_raise(ctx, model):
    big = mlp(width=64, d_in=64)  # 4,225 parameters
    bad = [("maxdet", {"noise": 0.0}), ("lcmd", {"noise": -1.0}), ("maxdist", {"features": "penultimate"}),
           ("ntk_variance", {"sketch_dim": 0}), ("ntk_emoc", {"eval_size": 0}), ("mc_variance", {"num_samples": 1}),
           ("kmeanspp_features", {"posterior": "yes"}), ("ntk_variance", {"features": "ntk"})]
    for name, opts in bad:
        with pytest.raises(ValueError):
            check_options(name, opts, budget=3, model=big)
    with pytest.raises(ValueError, match="stochastic"):
        check_options("mc_variance", {}, budget=3, model=model)
    with pytest.raises(ValueError, match="stochastic"):
        rs.mc_variance(jax.random.key(0), ctx, 3)
    with pytest.raises(ValueError, match="ntk_sketch"):
        rs.maxdet(jax.random.key(0), ctx._replace(model=big, x_pool=np.zeros((4, 64), np.float32),
                                                  x_labeled=np.zeros((0, 64), np.float32)), 2, features="ntk")
    with pytest.raises(ValueError, match="noise"):
        rs.lcmd(jax.random.key(0), ctx, 2, noise=float("nan"))
    with pytest.raises(ValueError, match="memory_bytes"):
        rs.maxdist(jax.random.key(0), ctx._replace(memory_bytes=1000), 2)
