"""Training: stop rule, batching, losses, restarts, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import TinyBNNet

from jaxal import data, models
from jaxal.ops.buckets import bucket
from jaxal.training.train import TrainConfig, epoch_batches, evaluate, init_variables, restart, train


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def mlp():
    return models.create("mlp", 10, input_shape=(64,), widths=(64,))


def test_digits_mlp_reaches_stop_rule(digits, mlp):
    x, y = digits.x_train[:300], digits.y_train[:300]
    v0 = init_variables(jax.random.key(0), mlp, x)
    cfg = TrainConfig(max_epochs=60, batch_size=32)
    r = train(jax.random.key(1), mlp, v0, x, y, 10, cfg)
    assert r.reached_target and r.train_accuracy >= 0.99
    assert 1 <= r.epochs < cfg.max_epochs
    acc, loss = evaluate(mlp, r.variables, x, y, 10)
    assert acc == pytest.approx(r.train_accuracy) and loss == pytest.approx(r.train_loss, rel=1e-5)
    test_acc, _ = evaluate(mlp, r.variables, digits.x_test, digits.y_test, 10)
    assert test_acc > 0.8  # learned something that generalises
    # without reaching the target, training runs to the cap and says so
    r2 = train(jax.random.key(1), mlp, v0, x, y, 10, TrainConfig(max_epochs=2, batch_size=32, target_accuracy=1.0))
    assert r2.epochs == 2 and not r2.reached_target


def test_squared_loss_trains_and_matches_formula(digits, mlp):
    x, y = digits.x_train[:120], digits.y_train[:120]
    v0 = init_variables(jax.random.key(0), mlp, x)
    before = evaluate(mlp, v0, x, y, 10, loss="squared")
    r = train(jax.random.key(1), mlp, v0, x, y, 10, TrainConfig(loss="squared", max_epochs=40, batch_size=32))
    assert r.train_loss < 0.5 * before[1] and r.train_accuracy > 0.9
    logits = np.asarray(mlp.apply(r.variables, x), np.float64)
    expected = np.mean(np.sum((logits - np.eye(10)[y]) ** 2, axis=1))
    assert r.train_loss == pytest.approx(expected, rel=1e-4)


def test_evaluate_matches_numpy_with_ragged_chunks(digits, mlp):
    x, y = digits.x_test[:37], digits.y_test[:37]
    v = init_variables(jax.random.key(3), mlp, x)
    acc, loss = evaluate(mlp, v, x, y, 10, batch_size=8)  # 4 full chunks + a padded one
    logits = np.asarray(mlp.apply(v, x), np.float64)
    logp = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1, keepdims=True)) - logits.max(1, keepdims=True)
    assert acc == pytest.approx(np.mean(logits.argmax(1) == y))
    assert loss == pytest.approx(-np.mean(logp[np.arange(37), y]), rel=1e-5)


def test_epoch_batches_never_size_one():
    for batch_size in (2, 3, 8, 64):
        for n in range(2, 4 * batch_size + 3):
            k, b = epoch_batches(n, batch_size)
            assert b >= 2 and k >= 1 and k * b <= n and n - k * b < k
            assert b <= max(batch_size, 3) and (n < batch_size or b >= batch_size // 2)
    assert epoch_batches(65, 64) == (2, 32)  # no ragged tail: two equal batches, one example sits out
    assert epoch_batches(10, 64) == (1, 10)  # n < batch_size: one batch of n


_SEEN_BATCHES: list[int] = []


class _Recorder(nn.Module):
    """A linear model that records the batch sizes it is traced with in train mode."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        if train:
            _SEEN_BATCHES.append(x.shape[0])
        return nn.Dense(3)(x)


def test_train_uses_no_batch_of_one():
    x = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    y = np.arange(9) % 3
    module = _Recorder()
    _SEEN_BATCHES.clear()
    v = init_variables(jax.random.key(0), module, x)
    train(jax.random.key(1), module, v, x, y, 3, TrainConfig(batch_size=8, max_epochs=3), buckets=False)
    assert _SEEN_BATCHES and all(b >= 2 for b in _SEEN_BATCHES)
    assert set(_SEEN_BATCHES) == {4}  # n = batch_size + 1: two batches of 4 (no batch of 1)
    _SEEN_BATCHES.clear()
    train(jax.random.key(1), module, v, x, y, 3, TrainConfig(batch_size=8, max_epochs=3))
    assert set(_SEEN_BATCHES) == {bucket(4)}  # the same batches, padded to their bucket


def _params_close(a, b, rtol=2e-4, atol=1e-5):
    for pa, pb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(pa), np.asarray(pb), rtol=rtol, atol=atol)


@pytest.mark.parametrize("n,batch_size,loss", [(20, 64, "cross_entropy"), (100, 32, "squared"), (37, 8, "cross_entropy")])
def test_bucketed_training_equals_exact_shapes(digits, mlp, n, batch_size, loss):
    # padded rows carry weight 0: the same batches, the same gradients, the same trained network
    x, y = digits.x_train[:n], digits.y_train[:n]
    v0 = init_variables(jax.random.key(0), mlp, x)
    cfg = TrainConfig(max_epochs=5, batch_size=batch_size, loss=loss, target_accuracy=1.0)
    padded = train(jax.random.key(1), mlp, v0, x, y, 10, cfg)
    exact = train(jax.random.key(1), mlp, v0, x, y, 10, cfg, buckets=False)
    assert padded.epochs == exact.epochs == 5
    _params_close(padded.variables, exact.variables)
    assert padded.train_loss == pytest.approx(exact.train_loss, rel=1e-4)
    assert padded.train_accuracy == exact.train_accuracy


def test_bucketed_training_compiles_once_per_bucket(digits):
    from jaxal.experiment import compile_clock

    module = models.create("mlp", 10, input_shape=(64,), widths=(24,))  # a network no other test compiles
    cfg = TrainConfig(max_epochs=2, batch_size=64)
    v0 = init_variables(jax.random.key(0), module, digits.x_train[:1])
    train(jax.random.key(1), module, v0, digits.x_train[:20], digits.y_train[:20], 10, cfg)
    before = compile_clock.compilations()
    for n in (21, 25, 30, 32):  # the bucket of 20: 32 rows
        train(jax.random.key(n), module, v0, digits.x_train[:n], digits.y_train[:n], 10, cfg)
    assert compile_clock.compilations() == before
    train(jax.random.key(2), module, v0, digits.x_train[:33], digits.y_train[:33], 10, cfg)
    assert compile_clock.compilations() > before  # the next bucket compiles its own step


def test_batchnorm_in_training_mode_sees_exact_batches():
    # a batch statistic must never see padded rows: such models train on exact shapes
    seen = []

    class BNRecorder(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            if train:
                seen.append(x.shape[0])
            return nn.Dense(3)(nn.BatchNorm(use_running_average=not train)(x))

    x = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    y = np.arange(9) % 3
    module = BNRecorder()
    v = init_variables(jax.random.key(0), module, x)
    train(jax.random.key(1), module, v, x, y, 3, TrainConfig(batch_size=8, max_epochs=2))
    assert set(seen) == {4}


def test_batchnorm_stats_and_dropout_in_training():
    x = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32) * 2.0 + 3.0
    y = np.arange(12) % 3
    module = TinyBNNet(8, dropout_rate=0.3)  # Dense - BatchNorm - ReLU - dropout, Dense head
    v0 = init_variables(jax.random.key(0), module, x)
    r = train(jax.random.key(1), module, v0, x, y, 3, TrainConfig(max_epochs=3, batch_size=4, target_accuracy=1.0))
    assert r.epochs == 3 and np.isfinite(r.train_loss)
    mean = np.asarray(r.variables["batch_stats"]["bn"]["mean"])
    assert np.all(np.isfinite(mean)) and not np.allclose(mean, 0.0)  # stats moved towards the data
    # the reported loss is the inference-mode loss (running stats, no dropout)
    logits = np.asarray(module.apply(r.variables, x), np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert r.train_loss == pytest.approx(-np.mean(logp[np.arange(12), y]), rel=1e-4)
    assert models.as_model(module, r.variables).logits(x).shape == (12, 3)


def test_shrink_perturb_limits(mlp, digits):
    x = digits.x_train[:4]
    key, prev_key = jax.random.key(7), jax.random.key(8)
    prev = init_variables(prev_key, mlp, x)
    prev = {**prev, "batch_stats": {"marker": jnp.arange(3.0)}}  # a non-param collection
    fresh = init_variables(key, mlp, x)
    cold = restart(key, "cold", mlp, prev, x)
    sp0 = restart(key, "shrink_perturb", mlp, prev, x, lam=0.0, sigma=1.0)
    jax.tree.map(np.testing.assert_array_equal, cold, fresh)
    jax.tree.map(np.testing.assert_array_equal, sp0["params"], fresh["params"])
    warm = restart(key, "warm", mlp, prev, x)
    sp1 = restart(key, "shrink_perturb", mlp, prev, x, lam=1.0, sigma=0.0)
    jax.tree.map(np.testing.assert_array_equal, sp1, warm)
    jax.tree.map(np.testing.assert_array_equal, warm, prev)
    assert "batch_stats" not in cold  # cold: collections from the fresh init
    # noise="init": exactly lam * theta + sigma * theta_fresh
    sp = restart(key, "shrink_perturb", mlp, prev, x, lam=0.3, sigma=0.2)
    jax.tree.map(lambda a, p, f: np.testing.assert_allclose(a, 0.3 * p + 0.2 * f, rtol=1e-6, atol=1e-7),
                 sp["params"], prev["params"], fresh["params"])


def test_shrink_perturb_gaussian_noise_std(mlp, digits):
    rng = np.random.default_rng(0)
    prev = {"params": {"a": {"kernel": rng.normal(size=(100, 150)).astype(np.float32)},
                       "b": {"bias": rng.normal(size=(5000,)).astype(np.float32)}},
            "batch_stats": {"m": np.ones(3, np.float32)}}
    lam, sigma = 0.4, 0.05
    x = digits.x_train[:1]  # unused by the gaussian noise
    new = restart(jax.random.key(1), "shrink_perturb", mlp, prev, x, lam=lam, sigma=sigma, noise="gaussian")
    z = np.concatenate([((np.asarray(n) - lam * p) / sigma).ravel() for n, p in
                        zip(jax.tree.leaves(new["params"]), jax.tree.leaves(prev["params"]))])
    assert z.size == 20000
    assert abs(z.mean()) < 0.035 and abs(z.std() - 1.0) < 0.025  # ~5 / ~5 standard errors
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.02  # normal, not e.g. uniform
    assert np.std(z[:15000]) == pytest.approx(np.std(z[15000:]), abs=0.08)  # every leaf perturbed
    np.testing.assert_array_equal(new["batch_stats"]["m"], prev["batch_stats"]["m"])
    other = restart(jax.random.key(2), "shrink_perturb", mlp, prev, x, lam=lam, sigma=sigma, noise="gaussian")
    assert not np.allclose(other["params"]["a"]["kernel"], new["params"]["a"]["kernel"])


def test_bad_inputs(mlp, digits):
    x, y = digits.x_train[:10], digits.y_train[:10]
    v = init_variables(jax.random.key(0), mlp, x)
    k = jax.random.key(1)
    with pytest.raises(ValueError, match="mismatched lengths"):
        train(k, mlp, v, x, y[:9], 10)
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        train(k, mlp, v, x, np.full(10, 10), 10)
    with pytest.raises(ValueError, match="NaN"):
        train(k, mlp, v, np.where(np.arange(64) == 3, np.nan, x), y, 10)
    with pytest.raises(ValueError, match="empty"):
        train(k, mlp, v, x[:0], y[:0], 10)
    with pytest.raises(ValueError, match="at least 2"):
        train(k, mlp, v, x[:1], y[:1], 10)
    with pytest.raises(ValueError, match="num_classes"):
        train(k, mlp, v, x, np.zeros(10, int), 1)
    with pytest.raises(ValueError, match="outputs 10 logits"):
        train(k, mlp, v, x, y % 5, 5)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(ValueError, match="target_accuracy"):
        TrainConfig(target_accuracy=1.5)
    with pytest.raises(ValueError, match="restart mode"):
        restart(k, "hot", mlp, v, x)
    with pytest.raises(ValueError, match="noise"):
        restart(k, "shrink_perturb", mlp, v, x, noise="uniform")
    with pytest.raises(ValueError, match="loss"):
        evaluate(mlp, v, x, y, 10, loss="hinge")


def test_inference_mode_shares_the_step_only_when_training_mode_computes_the_same():
    from jaxal.training.train import _train_flag_matters

    example = jax.ShapeDtypeStruct((1, 64), jnp.float32)

    def abstract(module):
        v = init_variables(jax.random.key(0), module, np.zeros((1, 64), np.float32))
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), v)

    plain = models.create("mlp", 10, input_shape=(64,), widths=(16,))
    dropout = models.create("mlp", 10, input_shape=(64,), widths=(16,), dropout_rate=0.5)
    assert not _train_flag_matters(plain, abstract(plain), example)
    assert _train_flag_matters(dropout, abstract(dropout), example)
    bn = TinyBNNet(8)
    v = init_variables(jax.random.key(0), bn, np.zeros((1, 5), np.float32))
    assert _train_flag_matters(bn, v, jax.ShapeDtypeStruct((1, 5), jnp.float32))
