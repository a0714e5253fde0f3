"""SSL trainers: pure pieces against their formulas, and short runs on a toy problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import TinyBNNet

from jaxal.models import MLP
from jaxal.training import augment as A
from jaxal.training import ssl as S
from jaxal.training.train import TrainConfig, TrainResult, init_variables


def test_ema_update_is_the_formula_on_a_pytree():
    rng = np.random.default_rng(0)
    teacher = {"a": rng.normal(size=(3, 2)), "b": (rng.normal(size=4), {"c": np.float64(2.0)})}
    student = jax.tree.map(lambda x: x + rng.normal(size=np.shape(x)), teacher)
    out = S.ema_update(teacher, student, 0.9)
    for t, s, o in zip(jax.tree.leaves(teacher), jax.tree.leaves(student), jax.tree.leaves(out)):
        np.testing.assert_allclose(np.asarray(o), 0.9 * t + 0.1 * s, rtol=1e-6)
    assert jax.tree.structure(out) == jax.tree.structure(teacher)


def test_fixmatch_only_confident_examples_get_gradient():
    probs_weak = jnp.array([[0.97, 0.02, 0.01], [0.5, 0.3, 0.2], [0.01, 0.01, 0.98], [0.9, 0.05, 0.05]])
    logits_strong = jax.random.normal(jax.random.key(0), (4, 3))
    mask = S.fixmatch_mask(probs_weak, 0.95)
    np.testing.assert_array_equal(np.asarray(mask), [1, 0, 1, 0])
    g_strong, g_weak = jax.grad(S.fixmatch_unlabeled_loss, argnums=(0, 1))(logits_strong, probs_weak, 0.95)
    g = np.asarray(g_strong)
    assert np.all(g[[1, 3]] == 0.0)  # unconfident: exactly zero
    assert np.all(np.abs(g[[0, 2]]).sum(axis=1) > 1e-3)  # confident: they do contribute
    assert np.all(np.asarray(g_weak) == 0.0)  # the weak view is a target only
    # value: CE of confident rows on the weak argmax, divided by ALL rows
    ls = np.asarray(jax.nn.log_softmax(logits_strong))
    np.testing.assert_allclose(float(S.fixmatch_unlabeled_loss(logits_strong, probs_weak, 0.95)),
                               -(ls[0, 0] + ls[2, 2]) / 4, rtol=1e-6)


def test_pseudo_label_thresholds():
    probs = jnp.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [0.4921875, 0.25, 0.2578125], [0.0, 1.0, 0.0]])
    labels, mask = S.pseudo_label_targets(probs, 0.5)
    np.testing.assert_array_equal(np.asarray(labels), [0, 2, 0, 1])
    np.testing.assert_array_equal(np.asarray(mask), [1, 1, 0, 1])  # max >= threshold, inclusive
    _, mask_hi = S.pseudo_label_targets(probs, 0.99)
    np.testing.assert_array_equal(np.asarray(mask_hi), [0, 0, 0, 1])
    # pseudo_label_loss: gradient through the logits only, not the targets
    logits = jnp.array([[2.0, 0.0, 0.0], [0.1, 0.0, 0.0]])  # max softmax 0.79, 0.36
    g = np.asarray(jax.grad(S.pseudo_label_loss)(logits, 0.5))
    assert np.all(g[1] == 0.0) and np.abs(g[0]).sum() > 0
    p0 = np.exp(2.0) / (np.exp(2.0) + 2)  # d/dlogits of CE(row 0, label 0) / 2 rows
    np.testing.assert_allclose(g[0], np.array([p0 - 1, (1 - p0) / 2, (1 - p0) / 2]) / 2, rtol=1e-5)


def test_sigmoid_rampup_values():
    assert abs(float(S.sigmoid_rampup(0, 100)) - np.exp(-5.0)) < 1e-7
    assert abs(float(S.sigmoid_rampup(50, 100)) - np.exp(-1.25)) < 1e-6
    assert float(S.sigmoid_rampup(100, 100)) == 1.0
    assert float(S.sigmoid_rampup(500, 100)) == 1.0
    assert float(S.sigmoid_rampup(3, 0)) == 1.0


def test_consistency_loss_is_softmax_mse_with_teacher_stopped():
    s, t = jax.random.normal(jax.random.key(1), (2, 5, 3))
    ref = np.mean((np.asarray(jax.nn.softmax(s)) - np.asarray(jax.nn.softmax(t))) ** 2)
    np.testing.assert_allclose(float(S.consistency_loss(s, t)), ref, rtol=1e-6)
    assert np.all(np.asarray(jax.grad(S.consistency_loss, argnums=1)(s, t)) == 0.0)


def _toy(seed=0):
    """3 Gaussian blobs in 2-D: 2 labeled per class, 90 unlabeled, 60 test."""
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])

    def draw(n):
        y = np.arange(n) % 3
        return (centres[y] + 0.6 * rng.normal(size=(n, 2))).astype(np.float32), y.astype(np.int32)

    (xl, yl), (xu, _), (xt, yt) = draw(6), draw(90), draw(60)
    return xl, yl, xu, xt, yt


NOISE = (A.gaussian_noise(0.05), A.chain(A.random_scaling(0.9, 1.1), A.gaussian_noise(0.15)))
TC = TrainConfig(learning_rate=1e-2, batch_size=8)


@pytest.mark.parametrize("trainer", S.SSL_TRAINERS)
def test_trainers_learn_a_separable_toy(trainer):
    xl, yl, xu, xt, yt = _toy()
    # mean_teacher runs on a BatchNorm net: its statistics must be trained and averaged too
    module = TinyBNNet(16) if trainer == "mean_teacher" else MLP(widths=(16,), num_classes=3)
    variables = init_variables(jax.random.key(0), module, xl)
    cfg = S.SSLConfig(steps=120, unlabeled_ratio=2, threshold=0.8, augment=NOISE)
    res, info = S.train_ssl_with_info(jax.random.key(1), module, variables, xl, yl, xu, 3, cfg,
                                      trainer=trainer, train_config=TC)
    assert isinstance(res, TrainResult) and info.loss.shape == (120,)
    assert jax.tree.structure(res.variables) == jax.tree.structure(variables)
    assert info.supervised_loss[-20:].mean() < 0.5 * info.supervised_loss[:10].mean()
    assert np.all((0 <= info.mask_rate) & (info.mask_rate <= 1))
    acc = float(np.mean(np.argmax(np.asarray(module.apply(res.variables, xt)), -1) == yt))
    assert acc > 0.8  # chance is 1/3
    assert res.train_accuracy == 1.0 and res.epochs == 120 * 8 // 6 + (120 * 8 % 6 > 0)
    if trainer == "mean_teacher":
        before = np.asarray(variables["batch_stats"]["bn"]["mean"])
        after = np.asarray(res.variables["batch_stats"]["bn"]["mean"])
        assert np.all(np.isfinite(after)) and not np.allclose(after, before)
    else:  # confident pseudo-labels appear as training goes on
        assert info.mask_rate[-10:].mean() > info.mask_rate[:5].mean()


def test_registry_common_signature(monkeypatch):
    assert S.trainers() == ["supervised", "pseudo_label", "mean_teacher", "fixmatch"]
    calls = []
    monkeypatch.setattr(S, "train", lambda *a: calls.append(("supervised", a)) or "sup")
    monkeypatch.setattr(S, "train_ssl", lambda *a, **kw: calls.append((kw["trainer"], a, kw)) or "ssl")
    args = ("key", "module", "vars", "xl", "yl", "xu", 3, "tc", "sc")
    assert [S.get_trainer(n)(*args) for n in S.trainers()] == ["sup", "ssl", "ssl", "ssl"]
    assert calls[0] == ("supervised", ("key", "module", "vars", "xl", "yl", 3, "tc"))  # x_u ignored
    for (name, a, kw), expected in zip(calls[1:], ["pseudo_label", "mean_teacher", "fixmatch"]):
        assert name == expected and a == args[:-2] + ("sc",) and kw["train_config"] == "tc"
    with pytest.raises(ValueError, match="trainer"):
        S.get_trainer("mixmatch")


def test_input_errors():
    xl, yl, xu, _, _ = _toy()
    module = MLP(widths=(8,), num_classes=3)
    variables = init_variables(jax.random.key(0), module, xl)
    with pytest.raises(ValueError, match="x_unlabeled"):
        S.train_ssl(jax.random.key(0), module, variables, xl, yl, xu[:, :1], 3)
    with pytest.raises(ValueError, match="y_labeled"):
        S.train_ssl(jax.random.key(0), module, variables, xl, yl + 5, xu, 3)
    with pytest.raises(ValueError, match="steps"):
        S.SSLConfig(steps=0)
    with pytest.raises(ValueError, match="trainer"):
        S.train_ssl(jax.random.key(0), module, variables, xl, yl, xu, 3, trainer="mixmatch")
