"""Frozen-encoder mode: ridge head (closed form vs optax vs numpy), look-ahead identity,
linear Model, AdamW head, PCA, embedding cache."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxal
from jaxal.model import predict_logits
from jaxal.ops.random import host_permutation
from jaxal.training import frozen as F


def _data(n=12, d=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d))
    y = rng.integers(0, c, size=n)
    return h, np.eye(c)[y], y


def _numpy_ridge(h, y1, lam, penalize_bias, w0=None):
    """Independent: lstsq on the augmented system [Φ; sqrt(lam) D] W = [Y; sqrt(lam) D W0]."""
    n, d = h.shape
    phi = np.hstack([h, np.ones((n, 1))])
    dpen = np.diag(np.r_[np.ones(d), 1.0 if penalize_bias else 0.0])
    w0 = np.zeros((d + 1, y1.shape[1])) if w0 is None else w0
    big = np.vstack([phi, np.sqrt(lam) * dpen])
    rhs = np.vstack([y1, np.sqrt(lam) * dpen @ w0])
    return np.linalg.lstsq(big, rhs, rcond=None)[0]


def _stack(head):
    return np.vstack([np.asarray(head["kernel"]), np.asarray(head["bias"])[None]])


@pytest.mark.parametrize("penalize_bias", [False, True])
def test_ridge_solvers_equal_numpy_lstsq(penalize_bias):
    h, y1, _ = _data()
    with jax.enable_x64(True):
        ref = _numpy_ridge(h, y1, 0.7, penalize_bias)
        for solver in F.SOLVERS:
            w = F.ridge_fit(h, y1, 0.7, solver=solver, penalize_bias=penalize_bias)
            assert w["kernel"].dtype == jnp.float64
            np.testing.assert_allclose(_stack(w), ref, atol=1e-10, rtol=1e-10)


def test_ridge_equals_optax_minimiser():
    h, y1, _ = _data()
    lam = 0.5
    with jax.enable_x64(True):
        closed = _stack(F.ridge_fit(h, y1, lam))
        phi = jnp.asarray(np.hstack([h, np.ones((len(h), 1))]))
        pen = jnp.asarray(np.r_[np.ones(4), 0.0])[:, None]

        def objective(w):  # the same objective, written independently
            return jnp.sum((phi @ w - y1) ** 2) + lam * jnp.sum(pen * w**2)

        lip = 2 * float(np.linalg.eigvalsh(np.asarray(phi.T @ phi) + lam * np.diag(np.asarray(pen[:, 0]))).max())
        tx = optax.sgd(1.0 / lip, momentum=0.9)

        def step(carry, _):
            w, s = carry
            u, s = tx.update(jax.grad(objective)(w), s)
            return (optax.apply_updates(w, u), s), None

        w = jnp.zeros((5, 3))
        (w, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=4000))((w, tx.init(w)))
        np.testing.assert_allclose(np.asarray(w), closed, atol=1e-9)
        g = jax.grad(objective)(jnp.asarray(closed))
        assert float(jnp.max(jnp.abs(g))) < 1e-9  # closed form is a stationary point


def test_ridge_anchor_and_min_norm():
    h, y1, _ = _data(n=12, d=4)
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5, 3))
    with jax.enable_x64(True):
        anchor = {"kernel": w0[:-1], "bias": w0[-1]}
        for solver in F.SOLVERS:
            w = F.ridge_fit(h, y1, 0.3, solver=solver, penalize_bias=True, anchor=anchor)
            np.testing.assert_allclose(_stack(w), _numpy_ridge(h, y1, 0.3, True, w0), atol=1e-10)
        # lam = 0: ordinary least squares (n > d + 1, unique)
        phi = np.hstack([h, np.ones((12, 1))])
        ols = np.linalg.lstsq(phi, y1, rcond=None)[0]
        for solver in ("svd", "lstsq"):
            np.testing.assert_allclose(_stack(F.ridge_fit(h, y1, 0.0, solver=solver)), ols, atol=1e-10)


def test_refit_with_point_is_the_kernel_lookahead_update():
    # d + 1 = 9 > |L| + 1 = 5: the NTK look-ahead (kernel h·h' + 1, no noise) is exactly a
    # min-norm refit anchored at the current head. Compare with the bordered kernel solve, in numpy.
    rng = np.random.default_rng(2)
    h_l, h_s = rng.normal(size=(4, 8)), rng.normal(size=(6, 8))
    y_l = np.eye(3)[[0, 1, 2, 1]]
    w0 = rng.normal(size=(9, 3)) * 0.3
    phi = lambda h: np.hstack([h, np.ones((len(h), 1))])  # noqa: E731
    f = lambda h: phi(h) @ w0  # noqa: E731
    k = lambda a, b: phi(a) @ phi(b).T  # noqa: E731
    kinv = np.linalg.inv(k(h_l, h_l))
    f_lin = f(h_s) + k(h_s, h_l) @ kinv @ (y_l - f(h_l))
    sigma = k(h_s, h_s) - k(h_s, h_l) @ kinv @ k(h_l, h_s)
    j = 2  # candidate x' = h_s[j], label y' = e_0
    y_new = np.eye(3)[0]
    f_plus = f_lin + np.outer(sigma[:, j] / sigma[j, j], y_new - f_lin[j])
    with jax.enable_x64(True):
        anchor = {"kernel": w0[:-1], "bias": w0[-1]}
        kw = dict(solver="svd", penalize_bias=True, anchor=anchor)
        np.testing.assert_allclose(np.asarray(F.linear_logits(F.ridge_fit(h_l, y_l, 0.0, **kw), h_s)), f_lin, atol=1e-9)
        w_plus = F.ridge_refit_with_point(h_l, y_l, 0.0, h_s[j], y_new, **kw)
        np.testing.assert_allclose(np.asarray(F.linear_logits(w_plus, h_s)), f_plus, atol=1e-9)


def test_ridge_input_errors():
    h, y1, _ = _data()
    with pytest.raises(ValueError, match="lam"):
        F.ridge_fit(h, y1, 0.0, solver="cholesky")
    with pytest.raises(ValueError, match="solver"):
        F.ridge_fit(h, y1, 1.0, solver="qr")
    with pytest.raises(ValueError, match="mismatched"):
        F.ridge_fit(h, y1[:5], 1.0)


def test_linear_model_logits_and_strategies():
    h, _, y = _data(n=20, d=5)
    rng = np.random.default_rng(3)
    head = {"kernel": rng.normal(size=(5, 3)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)}
    m = F.linear_model(head)
    assert m.dense_head and not m.stochastic and m.params["body"] == {}
    x = h.astype(np.float32)
    np.testing.assert_allclose(np.asarray(predict_logits(m, x)), x @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    # with an encoder: logits = encoder(x) @ W + b
    enc_w = rng.normal(size=(7, 5)).astype(np.float32)
    m2 = F.linear_model(head, features=lambda xr: jnp.tanh(xr @ enc_w))
    xr = rng.normal(size=(4, 7)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(m2.logits(xr)), np.tanh(xr @ enc_w) @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    idx = jaxal.select("entropy", jax.random.key(0), m, x_labeled=x[:5], y_labeled=y[:5], x_pool=x[5:], budget=3)
    assert len(set(idx.tolist())) == 3


def _blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], float)
    return (centres[y] + rng.normal(size=(n, 4))).astype(np.float32), y


def test_fit_head_ridge_and_adamw_separate_blobs():
    h, y = _blobs()
    for cfg in (F.HeadConfig(), F.HeadConfig(method="adamw", max_steps=400, patience=30)):
        model, info = F.fit_head(jax.random.key(0), h, y, 3, cfg)
        acc = float(np.mean(np.argmax(np.asarray(model.logits(h)), -1) == y))
        assert acc > 0.9 and abs(acc - info["train_accuracy"]) < 1e-6


def test_adamw_head_keeps_best_validation_head():
    h, y = _blobs(n=40, seed=1)
    y = y.copy()
    y[::5] = (y[::5] + 1) % 3  # label noise, so validation loss turns up
    key = jax.random.key(4)
    cfg = F.HeadConfig(method="adamw", learning_rate=0.05, max_steps=3000, patience=20, val_fraction=0.25)
    head, info = F.train_linear_head(key, h, y, 3, cfg)
    perm = host_permutation(key, 40)
    va = perm[:10]  # the same seeded split, recomputed
    val = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(F.linear_logits(head, h[va]), y[va])))
    assert abs(val - info.val_loss) < 1e-5
    assert info.steps == info.best_step + cfg.patience + 1 < cfg.max_steps  # stopped early
    assert info.best_step >= 1


def test_pca_matches_numpy_eigh():
    rng = np.random.default_rng(5)
    h = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    with jax.enable_x64(True):
        p = F.fit_pca(h, 3)
        cov = np.cov(h.T)
        vals, vecs = np.linalg.eigh(cov)
        np.testing.assert_allclose(np.asarray(p.explained_variance), vals[::-1][:3], rtol=1e-8)
        # same subspace up to sign
        np.testing.assert_allclose(np.abs(np.asarray(p.components).T @ vecs[:, ::-1][:, :3]), np.eye(3), atol=1e-8)
        z = np.asarray(p.transform(h))
        np.testing.assert_allclose(z.mean(0), 0, atol=1e-10)
    with pytest.raises(ValueError, match="k must"):
        F.fit_pca(h, 7)


def test_embedding_cache_runs_encoder_once(tmp_path):
    calls = []

    def encoder(x):
        calls.append(x.shape[0])
        return np.asarray(x)[:, :2] * 2.0

    x = np.arange(30.0).reshape(10, 3)
    cache = F.EmbeddingCache(tmp_path)
    h1 = cache.get("enc", encoder, x, jit=False)
    h2 = cache.get("enc", encoder, x, jit=False)
    assert calls == [10] and cache.computed == 1 and h2 is h1
    np.testing.assert_array_equal(h1, x[:, :2] * 2.0)
    # a new cache on the same directory reads the file and does not call the encoder
    again = F.EmbeddingCache(tmp_path)
    np.testing.assert_array_equal(again.get("enc", encoder, x, jit=False), h1)
    assert calls == [10] and again.computed == 0
    # other data or another encoder name -> a new pass
    cache.get("enc", encoder, x + 1, jit=False)
    cache.get("enc-v2", encoder, x, jit=False)
    assert cache.computed == 3 and len(cache) == 3
