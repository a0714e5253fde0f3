"""Jittered Cholesky, solves and block updates against direct numpy linear algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal.ops import linalg


def _spd(rng, n, rank=None):
    a = rng.normal(size=(n, rank or n + 3))
    return a @ a.T


def test_well_conditioned_matrix_needs_no_jitter_and_solves_exactly():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        a, b = _spd(rng, 6), rng.normal(size=(6, 2))
        chol = linalg.stable_cholesky(jnp.asarray(a))
        assert float(chol.jitter) == 0.0
        np.testing.assert_allclose(np.asarray(linalg.cho_solve(chol, b)), np.linalg.solve(a, b), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_singular_matrix_gets_relative_jitter_reported(dtype):
    with jax.enable_x64(dtype == np.float64):
        rng = np.random.default_rng(1)
        a = _spd(rng, 8, rank=3).astype(dtype) * 1e3  # rank 3: numerically singular
        chol = linalg.stable_cholesky(jnp.asarray(a))
        assert float(chol.jitter) > 0 and np.all(np.isfinite(np.asarray(chol.factor)))
        np.testing.assert_allclose(float(chol.relative_jitter), float(chol.jitter) / np.mean(np.diag(a)), rtol=1e-5)
        rebuilt = np.asarray(chol.factor) @ np.asarray(chol.factor).T
        np.testing.assert_allclose(rebuilt, a + float(chol.jitter) * np.eye(8), rtol=1e-4, atol=1e-3 * np.mean(np.diag(a)))


def test_fixed_jitter_and_bad_input():
    a = np.eye(3)
    chol = linalg.stable_cholesky(jnp.asarray(a), jitter=0.5)
    np.testing.assert_allclose(np.diag(np.asarray(chol.factor)), np.sqrt(1.5), rtol=1e-6)
    with pytest.raises(ValueError, match="square"):
        linalg.stable_cholesky(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="jitter"):
        linalg.stable_cholesky(jnp.asarray(a), jitter=-1.0)


def test_bordered_inverse_and_rank_one_update_match_direct_computation():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        k = _spd(rng, 7)
        a, b, c = k[:5, :5], k[:5, 5:], k[5:, 5:]
        got = linalg.bordered_inverse(jnp.asarray(np.linalg.inv(a)), jnp.asarray(b), jnp.asarray(c))
        np.testing.assert_allclose(np.asarray(got), np.linalg.inv(k), rtol=1e-8, atol=1e-10)
        one = linalg.bordered_inverse(jnp.asarray(np.linalg.inv(a)), jnp.asarray(k[:5, 5]), k[5, 5])
        np.testing.assert_allclose(np.asarray(one), np.linalg.inv(k[:6, :6]), rtol=1e-8, atol=1e-10)
        # conditioning a covariance on coordinate 2 zeroes its row and column
        post = linalg.rank_one_update(jnp.asarray(k), jnp.asarray(k[:, 2]), jnp.asarray(k[2]), -1.0 / k[2, 2])
        np.testing.assert_allclose(np.asarray(post)[2], 0.0, atol=1e-10)
        keep = [0, 1, 3, 4, 5, 6]
        want = k[np.ix_(keep, keep)] - np.outer(k[keep, 2], k[2, keep]) / k[2, 2]
        np.testing.assert_allclose(np.asarray(post)[np.ix_(keep, keep)], want, rtol=1e-10)
