"""Closed-form MLMOC/EMOC (scalar kernels) against the direct change-tensor path."""

import jax
import numpy as np
import pytest

from jaxal.lookahead import core


def _problem(seed, n_l=6, n_s=13, c=4, p=30, confident=False):
    """Random PSD kernel (features ``[n, p]``); ``S[0]`` duplicates labeled point 1.

    ``confident``: outputs close to one-hot rows, so many look-ahead changes are tiny
    and the expanded square cancels hardest.
    """
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n_l + n_s, p))
    phi[n_l] = phi[1]
    if confident:
        f = np.eye(c)[rng.integers(0, c, n_l + n_s)] + 0.01 * rng.normal(size=(n_l + n_s, c))
    else:
        f = rng.normal(size=(n_l + n_s, c)) * 0.5
    return phi @ phi.T / p, f, rng.integers(0, c, size=n_l), n_l


def _state(k, f, y, n_l, dtype):
    k, f = k.astype(dtype), f.astype(dtype)
    state, _ = core.init(k[:n_l, :n_l], k[n_l:, :n_l], k[n_l:, n_l:], f[:n_l], f[n_l:], y)
    return core.add(state, 4, int(np.argmax(f[n_l + 4])))  # S[4] queried; the others move


@pytest.mark.parametrize("objective", ["mlmoc", "emoc"])
@pytest.mark.parametrize("probability", ["softmax", "simplex"])
@pytest.mark.parametrize("confident", [False, True])
def test_closed_form_equals_direct_in_float64(objective, probability, confident):
    k, f, y, n_l = _problem(0, confident=confident)
    with jax.enable_x64(True):
        state = _state(k, f, y, n_l, np.float64)
        want, want_clamped = core.scores(state, objective, probability, method="direct")
        one_chunk = np.asarray(core.scores(state, objective, probability, method="closed_form")[0])
        for chunk in (None, 4, 1):  # one chunk; ragged last chunk (13 = 3·4 + 1); one per chunk
            got, clamped = core.scores(state, objective, probability, chunk, method="closed_form")
            got, want_np = np.asarray(got), np.asarray(want)
            assert np.asarray(clamped).tolist() == np.asarray(want_clamped).tolist()
            assert bool(clamped[0]) and got[4] == want_np[4] == -np.inf
            np.testing.assert_allclose(got[np.isfinite(want_np)], want_np[np.isfinite(want_np)], rtol=1e-10)
        # the default method is the closed form here
        np.testing.assert_array_equal(np.asarray(core.scores(state, objective, probability)[0]), one_chunk)


@pytest.mark.parametrize("objective", ["mlmoc", "emoc"])
@pytest.mark.parametrize("confident", [False, True])
def test_closed_form_in_float32_is_as_accurate_as_direct(objective, confident):
    k, f, y, n_l = _problem(1, n_s=40, c=5, confident=confident)
    state = _state(k, f, y, n_l, np.float32)
    got = np.asarray(core.scores(state, objective, method="closed_form")[0])
    direct = np.asarray(core.scores(state, objective, method="direct")[0])
    with jax.enable_x64(True):  # the same float32 state, scored in float64
        state64 = jax.tree_util.tree_map(lambda a: a.astype(np.float64) if a.dtype == np.float32 else a, state)
        want = np.asarray(core.scores(state64, objective, method="direct")[0])
    live = np.isfinite(want) & (np.arange(want.size) != 0)  # S[0] clamped: a rank value, not a score
    assert np.isfinite(got).sum() == np.isfinite(want).sum()
    np.testing.assert_allclose(got[live], want[live], rtol=1e-5)
    np.testing.assert_allclose(direct[live], want[live], rtol=1e-5)
    assert got[0] < got[live].min() and direct[0] < direct[live].min()


def test_closed_form_is_refused_where_it_does_not_apply():
    k, f, y, n_l = _problem(2)
    state = _state(k, f, y, n_l, np.float32)
    with pytest.raises(ValueError, match="closed_form"):
        core.scores(state, "eer", method="closed_form")
    full = state._replace(cov=np.broadcast_to(np.asarray(state.cov), state.cov.shape[:2] + (4, 4)) * np.eye(4))
    with pytest.raises(ValueError, match="closed_form"):
        core.scores(full, "mlmoc", method="closed_form")
    with pytest.raises(ValueError, match="method"):
        core.scores(state, "mlmoc", method="nope")
    # k ⊗ I as full blocks: the direct path on q = C equals the closed form on q = 1.
    np.testing.assert_allclose(
        np.asarray(core.scores(full, "emoc")[0]), np.asarray(core.scores(state, "emoc")[0]), rtol=2e-5
    )
