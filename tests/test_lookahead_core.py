"""NTK look-ahead maths against brute-force bordered-kernel solves (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal.lookahead import core


def _problem(rng, n_l=6, n_s=9, c=3, full=False, p=40):
    """Random PSD kernel from random Jacobians, outputs and labels (float64 numpy)."""
    n = n_l + n_s
    if full:
        jac = rng.normal(size=(n, c, p))
        k = np.einsum("icp,jdp->ijcd", jac, jac) / p
    else:
        phi = rng.normal(size=(n, p))
        k = phi @ phi.T / p
    f = rng.normal(size=(n, c)) * 0.5
    y = rng.integers(0, c, size=n_l)
    return k, f, y


def _split(k, n_l):
    return k[:n_l, :n_l], k[n_l:, :n_l], k[n_l:, n_l:]


def _flat(k):
    """[n1, n2, C, C] -> [n1 C, n2 C]; [n1, n2] -> itself ⊗ nothing (caller handles)."""
    n1, n2, c, _ = k.shape
    return k.transpose(0, 2, 1, 3).reshape(n1 * c, n2 * c)


def _lookahead_bruteforce(k, f, y_l, n_l, j, target):
    """f⁺_lin on S after adding (x_j, target) by a fresh solve of the bordered kernel."""
    c = f.shape[1]
    rows = list(range(n_l)) + [n_l + j]
    s_rows = list(range(n_l, k.shape[0]))
    resid = np.concatenate([np.eye(c)[y_l], target[None]]) - f[rows]
    if k.ndim == 2:
        kb = k[np.ix_(rows, rows)]  # [[K_LL, k_Lx'], [k_x'L, k_x'x']]
        return f[s_rows] + k[np.ix_(s_rows, rows)] @ np.linalg.solve(kb, resid)
    kb = _flat(k[np.ix_(rows, rows)])
    ks = _flat(k[np.ix_(s_rows, rows)])
    return f[s_rows] + (ks @ np.linalg.solve(kb, resid.reshape(-1))).reshape(len(s_rows), c)


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _entropy(p):
    p = p[p > 0]
    return -np.sum(p * np.log(p))


def _bruteforce_scores(k, f, y_l, n_l, objective):
    c = f.shape[1]
    f_s = f[n_l:]
    out = []
    for j in range(f_s.shape[0]):
        if objective in ("mlmoc", "flip_rate"):
            labels, weights = [int(np.argmax(f_s[j]))], [1.0]
        else:
            labels, weights = list(range(c)), list(_softmax(f_s[j]))
        total = 0.0
        for lab, w in zip(labels, weights):
            new = _lookahead_bruteforce(k, f, y_l, n_l, j, np.eye(c)[lab])
            if objective in ("mlmoc", "emoc"):
                val = np.sum(np.linalg.norm(new - f_s, axis=1))
            elif objective == "eer":
                val = -np.mean([_entropy(_softmax(row)) for row in new])
            else:
                val = np.mean(np.argmax(new, 1) != np.argmax(f_s, 1))
            total += w * val
        out.append(total)
    return np.array(out)


def _init(k, f, y, n_l, **kw):
    k_ll, k_sl, k_ss = _split(k, n_l)
    return core.init(k_ll, k_sl, k_ss, f[:n_l], f[n_l:], y, **kw)


@pytest.mark.parametrize("objective", ["mlmoc", "emoc", "eer", "flip_rate"])
def test_scalar_kernel_scores_match_bordered_bruteforce(objective):
    with jax.enable_x64(True):
        k, f, y = _problem(np.random.default_rng(0))
        state, info = _init(k, f, y, 6)
        got, clamped = core.scores(state, objective, chunk_size=4)  # 9 rows: padded last chunk
        want = _bruteforce_scores(k, f, y, 6, objective)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-9)
        assert float(info.jitter) == 0.0 and not np.any(np.asarray(clamped))


@pytest.mark.parametrize("objective", ["mlmoc", "emoc"])
def test_full_kernel_scores_match_bordered_bruteforce(objective):
    with jax.enable_x64(True):
        k, f, y = _problem(np.random.default_rng(1), n_l=4, n_s=5, c=3, full=True)
        state, _ = _init(k, f, y, 4)
        got, _ = core.scores(state, objective)
        np.testing.assert_allclose(np.asarray(got), _bruteforce_scores(k, f, y, 4, objective), rtol=1e-6)


@pytest.mark.parametrize("full", [False, True])
def test_add_equals_fresh_solve_with_point_appended(full):
    with jax.enable_x64(True):
        n_l, c = 5, 3
        k, f, y = _problem(np.random.default_rng(2), n_l=n_l, n_s=7, c=c, full=full)
        state, _ = _init(k, f, y, n_l)
        for i, lab in [(3, 2), (0, 1)]:
            state = core.add(state, i, lab)
        # Fresh: labeled = L + S[3] + S[0], evaluation set = S; network outputs unchanged.
        rows = list(range(n_l)) + [n_l + 3, n_l]
        kk = k[np.ix_(rows + list(range(n_l, k.shape[0])), rows + list(range(n_l, k.shape[0])))]
        ff = np.concatenate([f[rows], f[n_l:]])
        fresh, _ = _init(kk, ff, np.concatenate([y, [2, 1]]), len(rows))
        np.testing.assert_allclose(np.asarray(state.mean), np.asarray(fresh.mean), atol=1e-9)
        np.testing.assert_allclose(np.asarray(state.cov), np.asarray(fresh.cov), atol=1e-9)
        assert np.asarray(state.queried).tolist() == [True, False, False, True, False, False, False]


def test_greedy_batch_has_no_duplicates_and_starts_with_topk():
    with jax.enable_x64(True):
        k, f, y = _problem(np.random.default_rng(3), n_l=4, n_s=8)
        state, _ = _init(k, f, y, 4)
        idx, final, _ = core.greedy_batch(state, 8, "mlmoc")
        idx = np.asarray(idx)
        assert sorted(idx.tolist()) == list(range(8))
        assert idx[0] == int(np.argmax(np.asarray(core.scores(state)[0])))
        assert bool(np.all(np.asarray(final.queried)))


def test_duplicate_labeled_points_give_finite_scores_and_report_jitter():
    rng = np.random.default_rng(4)
    k, f, y = _problem(rng, n_l=6, n_s=8, p=5)  # rank 5 < L: K_LL singular
    dup = [0, 1, 2, 0, 1, 2] + list(range(6, 14))
    k, f = k[np.ix_(dup, dup)].astype(np.float32), f[dup].astype(np.float32)
    y = y[[0, 1, 2, 0, 1, 2]]
    state, info = _init(k, f, y, 6)
    assert float(info.jitter) > 0
    for obj in core.OBJECTIVES:
        s, _ = core.scores(state, obj)
        assert np.all(np.isfinite(np.asarray(s)))


def test_candidate_equal_to_labeled_point_is_clamped_in_float32():
    rng = np.random.default_rng(5)
    k, f, y = _problem(rng, n_l=5, n_s=6, p=60)
    order = list(range(5)) + [2] + list(range(6, 11))  # S[0] duplicates labeled point 2
    k, f = k[np.ix_(order, order)].astype(np.float32), f[order].astype(np.float32)
    state, info = _init(k, f, y, 5)
    s, clamped = core.scores(state, "mlmoc")
    assert int(info.num_clamped) >= 1 and bool(clamped[0])
    assert np.all(np.isfinite(np.asarray(s)))
    # A clamped candidate changes nothing: its score is the candidate-independent part.
    np.testing.assert_allclose(float(s[0]), float(jnp.sum(jnp.linalg.norm(state.offset, axis=1))), rtol=1e-5)


def test_simplex_projection_matches_bisection():
    rng = np.random.default_rng(6)
    v = rng.normal(size=(20, 5)) * 2
    got = np.asarray(core.simplex_projection(jnp.asarray(v)))
    for row, p in zip(v, got):
        lo, hi = row.min() - 1, row.max()
        for _ in range(200):  # τ with Σ max(v − τ, 0) = 1
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.maximum(row - mid, 0).sum() > 1 else (lo, mid)
        np.testing.assert_allclose(p, np.maximum(row - lo, 0), atol=1e-5)


def test_bad_objective_names_the_argument():
    k, f, y = _problem(np.random.default_rng(7))
    state, _ = _init(k, f, y, 6)
    with pytest.raises(ValueError, match="objective"):
        core.scores(state, "nope")
