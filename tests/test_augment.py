"""Augmentations: shapes/dtypes kept, deterministic per key, correct geometry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal.training import augment as A

KEY = jax.random.key(0)

SHAPES = {
    "digits": (5, 64),
    "mnist1d": (5, 40),
    "mnist": (3, 28, 28),  # grey [n, H, W]; fashion_mnist shares the recipe
    "svhn": (2, 32, 32, 3),
    "cifar10": (2, 32, 32, 3),
    "generic": (4, 7),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_for_dataset_keeps_shape_dtype_and_is_deterministic(name):
    x = jax.random.uniform(jax.random.key(1), SHAPES[name], jnp.float32)
    weak, strong = A.for_dataset(name)
    both = jax.jit(lambda k, x: (weak(k, x), strong(k, x)))  # one compile for the pair
    for a, b, c in zip(both(KEY, x), both(KEY, x), both(jax.random.key(7), x)):
        assert a.shape == x.shape and a.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert not np.array_equal(np.asarray(a), np.asarray(c))  # the key matters


def test_table_covers_datasets_and_flips_only_cifar():
    assert set(A.datasets()) == set(SHAPES) | {"svhn_cropped", "cifar100", "fashion_mnist"}
    assert {n for n, f in A.FLIPS.items() if f} == {"cifar10", "cifar100"}
    with pytest.raises(ValueError, match="dataset"):
        A.for_dataset("imagenet")


def test_digit_augmentations_never_mirror():
    # An asymmetric 8x8 image (bright left column): each augmented copy must stay closer
    # to the image than to its mirror (a flip would change a digit's class).
    img = np.zeros((8, 8), np.float32)
    img[:, 0] = 1.0
    x = jnp.asarray(np.repeat(img.reshape(1, 64), 64, axis=0))
    mirrored = img[:, ::-1].reshape(64)
    for aug in A.for_dataset("digits"):
        out = np.asarray(aug(KEY, x))
        d_same = np.linalg.norm(out - img.reshape(64), axis=1)
        d_flip = np.linalg.norm(out - mirrored, axis=1)
        assert np.all(d_same < d_flip)


def test_feature_dropout_zeroes_a_share_of_features():
    out = np.asarray(A.feature_dropout(0.25)(KEY, jnp.ones((200, 50))))
    assert set(np.unique(out)) <= {0.0, 1.0} and abs((out == 0).mean() - 0.25) < 0.02


def test_random_shift_matches_numpy_translation():
    x = jnp.arange(2 * 5 * 6 * 1, dtype=jnp.float32).reshape(2, 5, 6, 1) + 1
    out = np.asarray(A.random_shift(2)(KEY, x))
    xn = np.asarray(x)
    for i in range(2):  # every output is some zero-padded translation of the input
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                p = np.pad(xn[i], [(2, 2), (2, 2), (0, 0)])
                cand = p[2 + dy : 2 + dy + 5, 2 + dx : 2 + dx + 6]
                found |= np.array_equal(cand, out[i])
        assert found


def test_shift_1d_is_a_translation_and_varies_per_example():
    x = jnp.tile(jnp.arange(1.0, 11.0)[None], (32, 1))
    out = np.asarray(A.shift_1d(3)(KEY, x))
    shifts = set()
    for row in out:
        nz = row[row != 0]
        start = int(nz[0]) - 1  # first surviving value tells the shift
        np.testing.assert_array_equal(nz, np.arange(start + 1, start + 1 + nz.size))
        shifts.add((np.flatnonzero(row)[0], start))
    assert len(shifts) > 1


def test_flip_mirrors_or_keeps_each_image():
    x = jax.random.normal(jax.random.key(3), (16, 4, 5, 2))
    out = np.asarray(A.horizontal_flip()(KEY, x))
    xn = np.asarray(x)
    flipped = [np.array_equal(out[i], xn[i, :, ::-1]) for i in range(16)]
    kept = [np.array_equal(out[i], xn[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_cutout_zeroes_at_most_a_square():
    x = jnp.ones((8, 10, 10, 3))
    out = np.asarray(A.cutout(4)(KEY, x))
    zeros = (out == 0).all(axis=-1).sum(axis=(1, 2))
    assert (zeros <= 16).all() and (zeros >= 4).all()  # clipped at borders, >= 2x2


def test_scaling_and_noise_statistics():
    x = jnp.ones((1000, 20))
    s = np.asarray(A.random_scaling(0.5, 2.0)(KEY, x))
    assert np.allclose(s, s[:, :1])  # one factor per example
    assert 0.5 <= s.min() and s.max() <= 2.0
    xr = jax.random.normal(jax.random.key(2), (500, 50)) * 3.0
    d = np.asarray(A.gaussian_noise(0.1)(KEY, xr) - xr)
    assert abs(d.std() - 0.3) < 0.02  # relative to the example std (3)
