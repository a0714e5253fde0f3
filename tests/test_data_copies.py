"""Redundant noisy copies of a training set (data set options copies / copy_noise)."""

import numpy as np
import pytest

from jaxal import data


def test_digits_copies_layout_noise_and_seed():
    base = data.load("digits", seed=0)
    n = base.x_train.shape[0]
    d = data.load("digits", seed=0, copies=3, copy_noise=0.05)
    assert d.x_train.shape == (3 * n, 64) and d.x_train.dtype == np.float32
    np.testing.assert_array_equal(d.x_train[:n], base.x_train)  # block 0: the original
    np.testing.assert_array_equal(d.y_train, np.concatenate([base.y_train] * 3))
    np.testing.assert_array_equal(d.x_test, base.x_test)  # test set untouched
    np.testing.assert_array_equal(d.y_test, base.y_test)
    std = base.x_train.astype(np.float64).std(0)
    varying = std > 0
    for j in (1, 2):
        delta = (d.x_train[j * n : (j + 1) * n] - base.x_train).astype(np.float64)
        assert np.all(delta[:, ~varying] == 0)  # constant features get no noise
        z = delta[:, varying] / std[varying]  # noise in units of each feature's std
        assert abs(z.mean()) < 0.01 * 0.05 * 5 and abs(z.std() / 0.05 - 1) < 0.02
    # the two noisy blocks are independent draws
    d1, d2 = (d.x_train[j * n : (j + 1) * n] - base.x_train for j in (1, 2))
    assert abs(np.corrcoef(d1[:, varying].ravel(), d2[:, varying].ravel())[0, 1]) < 0.02
    # seeded by the data set seed: same seed, same copies; another seed, other noise
    np.testing.assert_array_equal(data.load("digits", seed=0, copies=3, copy_noise=0.05).x_train, d.x_train)
    other = data.load("digits", seed=1, copies=2, copy_noise=0.05)
    base1 = data.load("digits", seed=1)
    assert not np.allclose(other.x_train[n:] - base1.x_train, d.x_train[n : 2 * n] - base.x_train)


def test_exact_copies_and_defaults():
    base = data.load("mnist1d", num_samples=100)
    assert data.load("mnist1d", num_samples=100, copies=1).x_train.shape == base.x_train.shape
    d = data.load("mnist1d", num_samples=100, copies=2)  # copy_noise 0: exact duplicates
    np.testing.assert_array_equal(d.x_train, np.concatenate([base.x_train, base.x_train]))


@pytest.mark.parametrize("opts,match", [
    ({"copies": 0}, "copies"),
    ({"copies": 2.5}, "copies"),
    ({"copies": 2, "copy_noise": -0.1}, "copy_noise"),
    ({"copies": 2, "copy_noise": float("nan")}, "copy_noise"),
    ({"copy_noise": 0.1}, "copies >= 2"),
])
def test_bad_copy_options(opts, match):
    with pytest.raises(ValueError, match=match):
        data.load("digits", **opts)
