"""Jittered Cholesky, solves and block updates against direct numpy linear algebra."""

import warnings

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


# ------------------------------------------------------------- jitter search: cap, test, warning


def _tol(dtype):
    return 10.0 * float(np.finfo(dtype).eps)


def _with_spectrum(rng, eigenvalues):
    """``Q diag(eigenvalues) Qᵀ`` for a random orthogonal ``Q`` (float64)."""
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    return (q * np.asarray(eigenvalues)) @ q.T


def _kahan(n):
    """``L Lᵀ`` with ``L = I − (strictly lower ones)``: integer entries, every Cholesky pivot
    exactly 1, yet ``L⁻¹`` has entries ``2^(i−j−1)`` so ``λ_min ≈ 4^−n``."""
    lower = np.eye(n) - np.tril(np.ones((n, n)), -1)
    return lower @ lower.T, lower


def _old_pivot_test(a, rel=0.0):
    """The rule stable_cholesky used to accept a level by: a finite factor whose every
    squared pivot exceeds 10·eps·mean(diag A)."""
    scale = np.mean(np.diag(a))
    lc = np.asarray(jnp.linalg.cholesky(jnp.asarray(a) + rel * scale * jnp.eye(len(a), dtype=a.dtype)))
    return bool(np.all(np.isfinite(lc)) and np.min(np.diag(lc) ** 2) > _tol(a.dtype) * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cap_holds_on_a_matrix_that_needs_more_and_ok_is_false(dtype):
    with jax.enable_x64(dtype == np.float64):
        rng = np.random.default_rng(3)
        a = (_with_spectrum(rng, [3.0] * 11 + [-0.5]) * 7.0).astype(dtype)  # needs 0.5/mean(diag) ≈ 0.2
        scale = float(np.mean(np.diag(a)))
        chol = linalg.stable_cholesky(jnp.asarray(a))
        assert not bool(chol.ok)
        np.testing.assert_allclose(float(chol.relative_jitter), linalg.MAX_RELATIVE_JITTER, rtol=1e-6)
        assert float(chol.jitter) <= linalg.MAX_RELATIVE_JITTER * scale * (1 + 1e-6)
        # A smaller cap holds too; the same matrix at a cap above its need passes.
        b = (_with_spectrum(rng, [1.0] * 11 + [-3e-4])).astype(dtype)  # needs ≈ 3.3e-4 relative
        small = linalg.stable_cholesky(jnp.asarray(b), max_jitter=1e-4)
        assert not bool(small.ok) and float(small.relative_jitter) <= 1e-4 * (1 + 1e-6)
        full = linalg.stable_cholesky(jnp.asarray(b))
        assert bool(full.ok) and float(full.relative_jitter) <= linalg.MAX_RELATIVE_JITTER


def test_nan_factors_count_as_failure():
    a = np.eye(5, dtype=np.float32)
    a[1, 2] = a[2, 1] = np.nan
    assert not bool(linalg.stable_cholesky(jnp.asarray(a)).ok)
    assert not bool(linalg.stable_cholesky(jnp.asarray(a), jitter=0.1).ok)
    assert np.isnan(float(linalg.min_eigenvalue_estimate(jnp.full((4, 4), jnp.nan))))
    # a fixed jitter on an indefinite matrix: the factor is NaN, ok is False
    assert not bool(linalg.stable_cholesky(jnp.asarray(np.diag([1.0, -1.0]).astype(np.float32)), jitter=0.1).ok)
    assert bool(linalg.stable_cholesky(jnp.asarray(np.eye(3)), jitter=0.1).ok)


def test_pivot_test_accepts_a_numerically_singular_factor_the_eigenvalue_test_rejects():
    with jax.enable_x64(True):
        a, lower = _kahan(40)
        scale, tol = np.mean(np.diag(a)), _tol(np.float64)
        # exact: λ_min(A) = 1/‖L⁻¹‖₂², with L⁻¹ exact in float64 (powers of 2)
        lam_min = 1.0 / np.linalg.norm(np.linalg.inv(lower), 2) ** 2
        assert lam_min < 1e-20 * scale  # numerically singular by far ...
        assert _old_pivot_test(a)  # ... yet the old rule accepted jitter 0 (pivots are all exactly 1)
        est = float(linalg.min_eigenvalue_estimate(jnp.linalg.cholesky(jnp.asarray(a))))
        assert lam_min <= est <= 1.01 * lam_min  # the estimate sees it (and bounds λ_min from above)
        chol = linalg.stable_cholesky(jnp.asarray(a))
        assert bool(chol.ok) and float(chol.jitter) > 0
        lc = np.asarray(chol.factor)
        assert np.linalg.eigvalsh(lc @ lc.T)[0] >= tol * scale


def _needs_jitter_cases():
    rng = np.random.default_rng(11)
    phi = rng.normal(size=(100, 25))
    rank_deficient = phi @ phi.T / 25 + 0.5  # a correlated singular kernel
    slightly_indefinite = _with_spectrum(rng, list(np.linspace(0.5, 2.0, 29)) + [-3e-4])
    return [
        ("rank_deficient", rank_deficient, np.float32),
        ("rank_deficient", rank_deficient, np.float64),
        ("slightly_indefinite", slightly_indefinite, np.float32),
        ("slightly_indefinite", slightly_indefinite, np.float64),
        ("kahan", _kahan(30)[0], np.float64),
    ]


@pytest.mark.parametrize("case", range(5))
def test_jitter_used_is_at_least_what_eigvalsh_says_is_needed(case):
    name, a, dtype = _needs_jitter_cases()[case]
    a = a.astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        a64 = a.astype(np.float64)  # the matrix as stored
        scale, tol = np.mean(np.diag(a64)), _tol(dtype)
        lam = np.linalg.eigvalsh(a64)[0]
        if name == "kahan":  # eigvalsh's round-off (~1e-16·‖A‖) swamps λ_min ≈ 4^−30 here
            lam = 1.0 / np.linalg.norm(np.linalg.inv(_kahan(30)[1]), 2) ** 2
        needed = tol * scale - lam  # the least δ with λ_min(A + δI) ≥ tol·mean(diag)
        chol = linalg.stable_cholesky(jnp.asarray(a))
        assert bool(chol.ok), name
        assert float(chol.jitter) >= needed, (name, float(chol.jitter), needed)
        lc = np.asarray(chol.factor, np.float64)
        assert np.linalg.eigvalsh(lc @ lc.T)[0] >= tol * scale, name  # the factored matrix itself


def test_min_eigenvalue_estimate_bounds_lambda_min_from_above_and_is_close():
    with jax.enable_x64(True):
        rng = np.random.default_rng(12)
        for spectrum in ([1e-9] + [1.0] * 19, list(np.geomspace(1e-6, 1.0, 20)), [1e-7] * 5 + [1.0] * 15):
            a = _with_spectrum(rng, spectrum)
            lc = jnp.linalg.cholesky(jnp.asarray(a))
            est = float(linalg.min_eigenvalue_estimate(lc))
            lam = np.linalg.eigvalsh(np.asarray(lc) @ np.asarray(lc).T)[0]
            assert lam * (1 - 1e-9) <= est <= 1.05 * lam


def test_check_jitter_warns_above_the_threshold_or_on_failure_and_not_below():
    warn = linalg.WARN_RELATIVE_JITTER
    with pytest.warns(linalg.JitterWarning, match="relative jitter"):
        assert linalg.check_jitter(jnp.asarray(2 * warn), jnp.asarray(True)) is not None
    with pytest.warns(linalg.JitterWarning, match="not positive semi-definite"):
        linalg.check_jitter(linalg.MAX_RELATIVE_JITTER, False)
    with pytest.warns(linalg.JitterWarning, match="not positive semi-definite"):
        linalg.check_jitter(0.0, False, fixed=True)  # a fixed jitter that failed still warns
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.JitterWarning)
        assert linalg.check_jitter(jnp.asarray(warn / 2), jnp.asarray(True)) is None
        assert linalg.check_jitter(warn, True) is None  # "above", not "at"
        assert linalg.check_jitter(0.5, True, fixed=True) is None  # the caller chose it
    # end to end: a matrix needing more than the threshold warns, a singular kernel does not
    rng = np.random.default_rng(13)
    needs = _with_spectrum(rng, [1.0] * 9 + [-2 * warn]).astype(np.float32)
    chol = linalg.stable_cholesky(jnp.asarray(needs))
    assert bool(chol.ok) and float(chol.relative_jitter) > warn
    with pytest.warns(linalg.JitterWarning):
        linalg.check_jitter(chol.relative_jitter, chol.ok)
    phi = rng.normal(size=(60, 15)).astype(np.float32)
    chol = linalg.stable_cholesky(jnp.asarray(phi @ phi.T))
    assert bool(chol.ok) and 0 < float(chol.relative_jitter) <= warn
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.JitterWarning)
        linalg.check_jitter(chol.relative_jitter, chol.ok)
