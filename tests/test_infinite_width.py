"""Infinite-width NTKs against wide Flax MLPs, and the one-step-SGD step size.

The standard-parametrisation limit is compared with the empirical NTK of actual
Flax ``nn.Dense`` networks (the architecture jaxal trains); the step size of the
one-step-SGD baseline with the NTK ``Θ(x', x')`` computed by a brute-force Jacobian.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxal import models
from jaxal.lookahead import baselines, kernel_blocks
from jaxal.lookahead.from_model import APPROXIMATIONS
from jaxal.ntk import kernel as ntk_kernel


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _empirical_single_logit(module, x, seeds):
    """Mean over independent initialisations of the empirical NTK of logit 0."""
    ks = []
    for s in seeds:
        model = models.as_model(module, module.init(jax.random.key(s), x[:1]))
        ks.append(np.asarray(ntk_kernel(model, x, contraction="single_logit"), np.float64))
    return np.mean(ks, axis=0), model


def test_standard_limit_matches_a_width_4096_flax_mlp_and_ntk_param_does_not():
    # One width-4096 net fluctuates around its limit by ~4% (1/√n: a¹·a¹' is a sum of
    # n terms); the mean of three independent nets by ~2.5%, so 5% has margin.
    x = jax.random.normal(jax.random.key(0), (16, 8))
    module = models.create("mlp", 3, input_shape=(8,), widths=(4096, 4096))
    emp, model = _empirical_single_logit(module, x, seeds=(11, 12, 13))
    assert baselines.mlp_widths(model) == (4096, 4096)
    sp = np.asarray(baselines.relu_ntk_standard(x, widths=(4096, 4096)), np.float64)
    assert _rel(sp, emp) < 0.05
    # Documented contrast: the NTK-parametrisation limit is another kernel. Raw it is
    # off in scale (~100%); even the best scalar multiple is off in shape (~18%),
    # because it weights the input layer like the hidden ones.
    ntkp = np.asarray(baselines.relu_ntk_ntk_param(x, depth=2), np.float64)
    assert _rel(ntkp, emp) > 0.5
    best_scale = np.sum(ntkp * emp) / np.sum(ntkp * ntkp)
    assert _rel(best_scale * ntkp, emp) > 2 * _rel(sp, emp)
    # kernel_blocks: "infinite" is the standard limit of this model, the NTK-param one is opt-in
    assert "infinite" in APPROXIMATIONS and "infinite_ntk_param" in APPROXIMATIONS
    k_ll, k_sl, k_ss = kernel_blocks(model, x[:5], x[5:], approximation="infinite")
    np.testing.assert_allclose(np.asarray(k_sl), sp[5:, :5], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(k_ss), sp[5:, 5:], rtol=1e-5)
    k_ll, _, _ = kernel_blocks(model, x[:5], x[5:], approximation="infinite_ntk_param")
    np.testing.assert_allclose(np.asarray(k_ll), ntkp[:5, :5], rtol=1e-5)
    assert baselines.relu_ntk is baselines.relu_ntk_ntk_param


def test_standard_limit_weights_each_layer_by_its_fan_in():
    # Unequal widths: layer 2's weight gradient scales with n₁ = 512, layer 3's with
    # n₂ = 4096. Swapping the widths (the fan-out instead of the fan-in) is a different
    # kernel (~39% away), and the network tells them apart. The 512-wide layer makes
    # each net fluctuate by ~10% (mean of three: ~6.5%), hence the looser 10%.
    x = jax.random.normal(jax.random.key(1), (12, 6))
    module = models.create("mlp", 2, input_shape=(6,), widths=(512, 4096))
    emp, model = _empirical_single_logit(module, x, seeds=(21, 22, 23))
    widths = baselines.mlp_widths(model)
    assert widths == (512, 4096)
    sp = np.asarray(baselines.relu_ntk_standard(x, widths=widths), np.float64)
    swapped = np.asarray(baselines.relu_ntk_standard(x, widths=widths[::-1]), np.float64)
    assert _rel(sp, emp) < 0.10
    assert _rel(swapped, emp) > 3 * _rel(sp, emp)


def test_infinite_kernel_rejects_a_mismatched_depth():
    module = models.create("mlp", 3, input_shape=(4,), widths=(8, 8))
    x = jnp.ones((3, 4))
    model = models.as_model(module, module.init(jax.random.key(0), x))
    with pytest.raises(ValueError, match="depth"):
        kernel_blocks(model, x[:1], x[1:], approximation="infinite", depth=3)


# ----------------------------------------------------------------- one-step SGD


def _jacobian64(model, x):
    """``J [C, P]`` of the logits at one example, by jax.jacrev (float64)."""
    jac = jax.jacrev(lambda p: model.apply(p, x[None])[0])(model.params)
    return jnp.concatenate([j.reshape(j.shape[0], -1) for j in jax.tree_util.tree_leaves(jac)], axis=1)


def _model64(num_classes, widths, d, key):
    module = models.MLP(widths=widths, num_classes=num_classes)  # the class: create() wants C >= 2
    variables = module.init(key, jnp.zeros((1, d), jnp.float64))
    return models.as_model(module, jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables))


def test_default_step_is_half_inverse_ntk_and_lands_on_the_label_for_one_logit():
    with jax.enable_x64(True):
        model = _model64(1, (256,), 5, jax.random.key(3))
        x = jax.random.normal(jax.random.key(4), (6, 5), jnp.float64)
        j, y = 2, jnp.array([1.0])
        jac = _jacobian64(model, x[j])
        theta = float((jac @ jac.T)[0, 0])  # Θ(x', x') by brute force
        f = model.logits(x)
        r = f[j] - y
        loss, grads = jax.value_and_grad(lambda p: jnp.sum((model.apply(p, x[j][None])[0] - y) ** 2))(model.params)
        eta = float(baselines.fitting_learning_rate(loss, grads))
        np.testing.assert_allclose(eta, 1.0 / (2.0 * theta), rtol=1e-10)
        # the linearised change at x' is −r exactly; the network's is close (second order)
        delta_lin = -eta * jac @ (2.0 * jac.T @ r)
        np.testing.assert_allclose(np.asarray(delta_lin), -np.asarray(r), rtol=1e-10)
        moved = baselines.one_step_sgd_outputs(model, x, x[j], y)
        assert abs(float(moved[j, 0] - y[0])) < 0.1 * abs(float(r[0]))
        # a step 3/(2Θ) (the old default's regime, 2·lr·Θ ≈ 3) overshoots: past y' by about r
        over = baselines.one_step_sgd_outputs(model, x, x[j], y, learning_rate=3.0 / (2.0 * theta))
        assert float((over[j, 0] - y[0]) * r[0]) < -0.5 * float(r[0] ** 2)


def test_default_step_removes_the_residual_along_itself_and_scores_match():
    with jax.enable_x64(True):
        model = _model64(3, (16, 16), 4, jax.random.key(5))
        x = jax.random.normal(jax.random.key(6), (7, 4), jnp.float64)
        f = model.logits(x)
        cand = np.array([1, 4])
        want = []
        for j in cand:
            y = jax.nn.one_hot(jnp.argmax(f[j]), 3, dtype=jnp.float64)
            r = f[j] - y
            jac = _jacobian64(model, x[j])
            jjt = jac @ jac.T
            eta = float(r @ r / (2.0 * r @ jjt @ r))  # 2‖r‖²/‖2Jᵀr‖²
            delta_lin = -eta * jac @ (2.0 * jac.T @ r)
            np.testing.assert_allclose(float(r @ delta_lin), -float(r @ r), rtol=1e-10)  # no overshoot along r
            flat, unravel = ravel_pytree(model.params)
            grad = 2.0 * jac.T @ r  # leaves in the same order as ravel_pytree (tree_leaves)
            moved = unravel(flat - eta * grad)
            want.append(float(jnp.sum(jnp.linalg.norm(model.apply(moved, x) - f, axis=1))))
        got = baselines.one_step_sgd_scores(model, x, candidates=jnp.asarray(cand), chunk_size=1)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-8)
