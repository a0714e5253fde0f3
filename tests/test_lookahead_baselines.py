"""Infinite-width ReLU NTK and the one-step-SGD look-ahead."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxal import models
from jaxal.lookahead import baselines


def _wide_relu_net_ntk(x, width, depth, sw, sb, key):
    """Empirical NTK of one random NTK-parametrised ReLU MLP, by a brute-force Jacobian."""
    d = x.shape[1]
    sizes = [d] + [width] * depth + [1]
    keys = jax.random.split(key, 2 * len(sizes))
    params = [
        (jax.random.normal(keys[2 * i], (sizes[i], sizes[i + 1])), jax.random.normal(keys[2 * i + 1], (sizes[i + 1],)))
        for i in range(len(sizes) - 1)
    ]

    def f(ps, x):
        h = x
        for i, (w, b) in enumerate(ps):
            z = np.sqrt(sw) * h @ w / np.sqrt(h.shape[-1]) + np.sqrt(sb) * b
            h = jax.nn.relu(z) if i < len(ps) - 1 else z
        return h[:, 0]

    jac = jax.jacrev(f)(params, x)
    flat = jnp.concatenate([j.reshape(x.shape[0], -1) for j in jax.tree_util.tree_leaves(jac)], axis=1)
    return flat @ flat.T


def test_relu_ntk_matches_monte_carlo_of_a_wide_network():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    sw, sb, depth = 1.5, 0.1, 2  # σ_w² ≠ 2 so variance propagation matters
    want = np.mean([np.asarray(_wide_relu_net_ntk(x, 1024, depth, sw, sb, jax.random.PRNGKey(s))) for s in range(3)],
                   axis=0)
    got = np.asarray(baselines.relu_ntk(x, depth=depth, weight_variance=sw, bias_variance=sb))
    np.testing.assert_allclose(got, want, rtol=0.2)  # MC error here ~10%; depth 1 instead of 2 is off by 64%
    # and the analytic kernel is symmetric, PSD and matches its own x2 form
    assert np.allclose(got, got.T, atol=1e-5) and np.linalg.eigvalsh(got).min() > -1e-5
    np.testing.assert_allclose(np.asarray(baselines.relu_ntk(x[:2], x, depth=depth, weight_variance=sw,
                                                             bias_variance=sb)), got[:2], rtol=1e-5)


def test_one_layer_limits_match_numerical_integration():
    # Both infinite-width limits of one hidden ReLU layer, with (u, v) ~ N(0, Σ⁰ = x x'ᵀ/d)
    # and the expectations integrated over the positive quadrant (scipy dblquad;
    # independent of the arc-cosine closed forms):
    # NTK parametrisation (σ_w² = 1, σ_b² = 0): Θ = E[relu(u)relu(v)] + (x·x'/d) E[relu'(u)relu'(v)];
    # standard parametrisation, width n: Θ = (x·x' + 1) E[relu'(u)relu'(v)] + n E[relu(u)relu(v)] + 1.
    from scipy import integrate

    x = np.array([[1.0, 0.5], [-0.3, 2.0]])
    s = x @ x.T / 2
    inv, det = np.linalg.inv(s), np.linalg.det(s)

    def density(v, u):
        z = np.array([u, v])
        return np.exp(-0.5 * z @ inv @ z) / (2 * np.pi * np.sqrt(det))

    e_relu = integrate.dblquad(lambda v, u: u * v * density(v, u), 0, np.inf, 0, np.inf)[0]
    e_step = integrate.dblquad(density, 0, np.inf, 0, np.inf)[0]
    want = e_relu + s[0, 1] * e_step
    got = float(baselines.relu_ntk(jnp.asarray(x), depth=1)[0, 1])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    n = 7
    want_standard = (x[0] @ x[1] + 1) * e_step + n * e_relu + 1
    got_standard = float(baselines.relu_ntk_standard(jnp.asarray(x), widths=(n,))[0, 1])
    np.testing.assert_allclose(got_standard, want_standard, rtol=1e-5)
    # no hidden layer: a linear model, Θ = x·x' + 1
    np.testing.assert_allclose(np.asarray(baselines.relu_ntk_standard(jnp.asarray(x), widths=())), x @ x.T + 1,
                               rtol=1e-6)


def test_one_step_sgd_score_equals_an_explicit_optax_step():
    module = models.create("mlp", 3, input_shape=(4,), widths=(8,))
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    variables = module.init(jax.random.PRNGKey(2), x)
    model = models.as_model(module, variables)
    lr, j = 0.05, 2
    f = model.logits(x)
    y = jax.nn.one_hot(jnp.argmax(f[j]), 3)

    tx = optax.sgd(lr)
    loss = lambda p: jnp.sum((model.apply(p, x[j:j + 1])[0] - y) ** 2)  # noqa: E731
    updates, _ = tx.update(jax.grad(loss)(model.params), tx.init(model.params), model.params)
    moved = optax.apply_updates(model.params, updates)
    want = float(jnp.sum(jnp.linalg.norm(model.apply(moved, x) - f, axis=1)))

    got = baselines.one_step_sgd_scores(model, x, candidates=jnp.array([j, 0]), learning_rate=lr, chunk_size=1)
    np.testing.assert_allclose(float(got[0]), want, rtol=1e-5)
    assert np.isfinite(np.asarray(got)).all()
