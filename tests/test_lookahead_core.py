"""NTK look-ahead maths against brute-force bordered-kernel solves (float64)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal import models
from jaxal.lookahead import core
from jaxal.lookahead.from_model import init_from_model
from jaxal.ops.linalg import MAX_RELATIVE_JITTER, JitterWarning


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


def _lookahead_bruteforce(k, f, y_l, n_l, j, target, nugget=0.0, candidate_nugget=True):
    """f⁺_lin on S after adding (x_j, target) by a fresh solve of the bordered kernel.

    ``nugget`` δ is put explicitly on the bordered matrix's diagonal:
    ``[[K_LL + δI, k_Lx'], [k_x'L, k_x'x' + δ]]`` (``candidate_nugget=False``: on ``K_LL`` only).
    """
    c = f.shape[1]
    rows = list(range(n_l)) + [n_l + j]
    s_rows = list(range(n_l, k.shape[0]))
    resid = np.concatenate([np.eye(c)[y_l], target[None]]) - f[rows]
    q = 1 if k.ndim == 2 else c
    noise = nugget * np.repeat(np.r_[np.ones(n_l), float(candidate_nugget)], q)
    if k.ndim == 2:
        kb = k[np.ix_(rows, rows)] + np.diag(noise)  # [[K_LL, k_Lx'], [k_x'L, k_x'x']] + nugget
        return f[s_rows] + k[np.ix_(s_rows, rows)] @ np.linalg.solve(kb, resid)
    kb = _flat(k[np.ix_(rows, rows)]) + np.diag(noise)
    ks = _flat(k[np.ix_(s_rows, rows)])
    return f[s_rows] + (ks @ np.linalg.solve(kb, resid.reshape(-1))).reshape(len(s_rows), c)


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _entropy(p):
    p = p[p > 0]
    return -np.sum(p * np.log(p))


def _bruteforce_scores(k, f, y_l, n_l, objective, candidates=None, **nugget):
    c = f.shape[1]
    f_s = f[n_l:]
    out = []
    for j in range(f_s.shape[0]) if candidates is None else candidates:
        if objective in ("mlmoc", "flip_rate"):
            labels, weights = [int(np.argmax(f_s[j]))], [1.0]
        else:
            labels, weights = list(range(c)), list(_softmax(f_s[j]))
        total = 0.0
        for lab, w in zip(labels, weights):
            new = _lookahead_bruteforce(k, f, y_l, n_l, j, np.eye(c)[lab], **nugget)
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


@pytest.mark.parametrize(
    "objective,method",
    [("mlmoc", "auto"), ("mlmoc", "direct"), ("emoc", "auto"), ("emoc", "direct"), ("eer", "auto"),
     ("flip_rate", "auto")],
)
def test_scalar_kernel_scores_match_bordered_bruteforce(objective, method):
    with jax.enable_x64(True):
        k, f, y = _problem(np.random.default_rng(0))
        state, info = _init(k, f, y, 6)
        got, clamped = core.scores(state, objective, chunk_size=4, method=method)  # 9 rows: ragged last chunk
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


@pytest.mark.parametrize("objective", ["mlmoc", "emoc", "eer", "flip_rate"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_greedy_equals_python_loop_of_direct_scores_and_add(objective, seed):
    """One compiled loop (rank-1 updates of mean, Σ and c·meanᵀ + closed form for
    MLMOC/EMOC; direct scoring for EER/flip rate) = the Python loop of scores/add."""
    with jax.enable_x64(True):
        k, f, y = _problem(np.random.default_rng(10 + seed), n_l=5, n_s=23, c=4)
        state, _ = _init(k, f, y, 5)
        state = core.add(state, 7, 2)  # start from a state with a queried candidate
        got_idx, got, got_counts = core.greedy_batch(state, 9, objective, chunk_size=None if seed else 5)
        want_idx, want, want_counts = core.greedy_batch_reference(state, 9, objective, method="direct")
        assert np.asarray(got_idx).tolist() == np.asarray(want_idx).tolist()
        assert np.asarray(got_counts).tolist() == np.asarray(want_counts).tolist()
        np.testing.assert_allclose(np.asarray(got.mean), np.asarray(want.mean), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(got.cov), np.asarray(want.cov), rtol=1e-10, atol=1e-12)
        assert np.array_equal(np.asarray(got.queried), np.asarray(want.queried))
        np.testing.assert_array_equal(np.asarray(got.offset), np.asarray(want.offset))


def test_compiled_greedy_with_full_kernel_blocks_equals_python_loop():
    with jax.enable_x64(True):
        k, f, y = _problem(np.random.default_rng(20), n_l=4, n_s=7, c=3, full=True)
        state, _ = _init(k, f, y, 4)
        got_idx, got, _ = core.greedy_batch(state, 4, "emoc")
        want_idx, want, _ = core.greedy_batch_reference(state, 4, "emoc")
        assert np.asarray(got_idx).tolist() == np.asarray(want_idx).tolist()
        np.testing.assert_allclose(np.asarray(got.cov), np.asarray(want.cov), atol=1e-10)


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


def _duplicate_problem(seed=5, n_l=5, n_s=10, c=3, p=60):
    """Features where S[0] equals labeled point 2 and S[1] is labeled point 4 moved by ~1e-3."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n_l + n_s, p))
    phi[n_l] = phi[2]
    phi[n_l + 1] = phi[4] + 1e-3 * rng.normal(size=p)
    f = rng.normal(size=(n_l + n_s, c)) * 0.5
    return phi @ phi.T / p, f, rng.integers(0, c, size=n_l)


@pytest.mark.parametrize("objective", ["mlmoc", "emoc", "eer", "flip_rate"])
def test_clamped_duplicates_rank_last_and_the_rest_match_bruteforce(objective):
    n_l = 5
    k, f, y = _duplicate_problem(n_l=n_l)
    n_s = k.shape[0] - n_l
    with jax.enable_x64(True):
        state, _ = _init(k, f, y, n_l)
        s, clamped = (np.asarray(a) for a in core.scores(state, objective))
        # float64: only the exact duplicate is clamped; every other score is the bordered solve's.
        assert clamped.tolist() == [True] + [False] * (n_s - 1)
        assert np.isfinite(s[0]) and s[0] < s[1:].min()
        want = _bruteforce_scores(k, f, y, n_l, objective, candidates=range(1, n_s))
        np.testing.assert_allclose(s[1:], want, rtol=1e-6, atol=1e-9)
        # An added (queried) candidate is below the clamped one.
        s_after = np.asarray(core.scores(core.add(state, 4, 1), objective)[0])
        assert s_after[4] == -np.inf and np.isfinite(s_after[0])
        assert s_after[0] < np.delete(s_after, [0, 4]).min()
    # float32: the near-duplicate's σ² is below the floor too; both go last, the rest keep the order.
    state32, info = _init(k.astype(np.float32), f.astype(np.float32), y, n_l)
    s32, clamped32 = (np.asarray(a) for a in core.scores(state32, objective))
    assert int(info.num_clamped) == 2 and clamped32[:2].all() and not clamped32[2:].any()
    assert np.all(np.isfinite(s32)) and max(s32[0], s32[1]) < s32[2:].min()
    want = _bruteforce_scores(k, f, y, n_l, objective, candidates=range(2, n_s))
    if objective == "flip_rate":  # a multiple of 1/|S|; float32 may flip one borderline argmax
        np.testing.assert_allclose(s32[2:], want, atol=1.01 / n_s)
    else:
        np.testing.assert_array_equal(np.argsort(-s32[2:]), np.argsort(-want))


@pytest.mark.parametrize("fast", [True, False])
def test_greedy_and_best_pick_clamped_candidates_only_when_nothing_else_is_left(fast):
    n_l = 5
    k, f, y = _duplicate_problem(n_l=n_l, n_s=6)
    with jax.enable_x64(True):
        state, _ = _init(k, f, y, n_l)
        for objective in ("mlmoc", "flip_rate"):
            greedy = core.greedy_batch if fast else core.greedy_batch_reference
            idx = np.asarray(greedy(state, 6, objective)[0]).tolist()
            assert sorted(idx) == list(range(6)) and idx[-1] == 0
            st = state
            for i in range(1, 6):
                assert int(core.best(st, objective)) != 0
                st = core.add(st, i, 0)
            assert int(core.best(st, objective)) == 0


def test_candidate_equal_to_labeled_point_is_clamped_in_float32():
    rng = np.random.default_rng(5)
    k, f, y = _problem(rng, n_l=5, n_s=6, p=60)
    order = list(range(5)) + [2] + list(range(6, 11))  # S[0] duplicates labeled point 2
    k, f = k[np.ix_(order, order)].astype(np.float32), f[order].astype(np.float32)
    state, info = _init(k, f, y, 5)
    s, clamped = core.scores(state, "mlmoc")
    assert int(info.num_clamped) >= 1 and bool(clamped[0])
    assert np.all(np.isfinite(np.asarray(s)))
    # A clamped candidate changes nothing: its update is zero, so it ranks last.
    assert float(s[0]) < float(jnp.min(s[1:]))


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


# ------------------------------------------------------------------- jitter as a nugget


def _posterior_bruteforce(k, f, y_rows, rows, n_l, nugget):
    """Mean and covariance on S given labels on ``rows`` (indices into [L; S]), by a direct
    float64 solve with the nugget δ explicitly on every labeled row's diagonal."""
    c = f.shape[1]
    s_rows = list(range(n_l, k.shape[0]))
    resid = np.eye(c)[y_rows] - f[rows]
    if k.ndim == 2:
        kb = k[np.ix_(rows, rows)] + nugget * np.eye(len(rows))
        ks = k[np.ix_(s_rows, rows)]
        return f[s_rows] + ks @ np.linalg.solve(kb, resid), k[np.ix_(s_rows, s_rows)] - ks @ np.linalg.solve(kb, ks.T)
    kb = _flat(k[np.ix_(rows, rows)]) + nugget * np.eye(len(rows) * c)
    ks = _flat(k[np.ix_(s_rows, rows)])
    mean = f[s_rows] + (ks @ np.linalg.solve(kb, resid.reshape(-1))).reshape(len(s_rows), c)
    return mean, _flat(k[np.ix_(s_rows, s_rows)]) - ks @ np.linalg.solve(kb, ks.T)


@pytest.mark.parametrize(
    "objective,method", [("mlmoc", "auto"), ("mlmoc", "direct"), ("emoc", "auto"), ("eer", "auto")]
)
def test_jittered_scores_match_the_bordered_solve_with_the_nugget_on_the_candidate(objective, method):
    with jax.enable_x64(True):
        n_l, rel = 6, 0.05  # a large fixed jitter, so the nugget's effect is far above round-off
        k, f, y = _problem(np.random.default_rng(30), n_l=n_l)
        delta = rel * np.mean(np.diag(k[:n_l, :n_l]))
        state, info = _init(k, f, y, n_l, jitter=rel)
        np.testing.assert_allclose(float(state.nugget), delta, rtol=1e-12)
        assert bool(info.jitter_ok)
        got = np.asarray(core.scores(state, objective, method=method)[0])
        want = _bruteforce_scores(k, f, y, n_l, objective, nugget=delta)
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
        # the inconsistent choice (nugget on K_LL, none on the candidate) is far off
        other = _bruteforce_scores(k, f, y, n_l, objective, nugget=delta, candidate_nugget=False)
        assert np.max(np.abs(other - want)) > 1e3 * (1e-8 * np.max(np.abs(want)) + 1e-10)


@pytest.mark.parametrize("full", [False, True])
def test_jittered_add_is_the_block_inverse_of_the_bordered_matrix_with_the_nugget(full):
    with jax.enable_x64(True):
        n_l, rel = 5, 0.05
        k, f, y = _problem(np.random.default_rng(31), n_l=n_l, n_s=7, c=3, full=full)
        k_ll = _flat(k[:n_l, :n_l]) if full else k[:n_l, :n_l]
        delta = rel * np.mean(np.diag(k_ll))
        state, _ = _init(k, f, y, n_l, jitter=rel)
        # Schur complement of the bordered (|L|+1)-matrix vs σ²(x') + δ from the state
        j = 2
        rows = list(range(n_l)) + [n_l + j]
        q = 3 if full else 1
        kb = (_flat(k[np.ix_(rows, rows)]) if full else k[np.ix_(rows, rows)]) + delta * np.eye(len(rows) * q)
        m = n_l * q
        schur = kb[m:, m:] - kb[m:, :m] @ np.linalg.solve(kb[:m, :m], kb[:m, m:])
        np.testing.assert_allclose(np.asarray(state.cov[j, j]) + delta * np.eye(schur.shape[0]), schur, rtol=1e-9)
        # two adds = the direct solve with both points appended, every labeled row with nugget δ
        labeled, labels = list(range(n_l)), list(y)
        for i, lab in [(j, 1), (5, 0)]:
            state = core.add(state, i, lab)
            labeled, labels = labeled + [n_l + i], labels + [lab]
            mean, cov = _posterior_bruteforce(k, f, np.asarray(labels), labeled, n_l, delta)
            np.testing.assert_allclose(np.asarray(state.mean), mean, rtol=1e-9, atol=1e-11)
            got_cov = np.asarray(state.cov)[:, :, 0, 0] if not full else _flat(np.asarray(state.cov))
            np.testing.assert_allclose(got_cov, cov, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("objective", ["mlmoc", "emoc"])
def test_jittered_compiled_greedy_equals_python_loop(objective):
    with jax.enable_x64(True):
        k, f, y = _problem(np.random.default_rng(32), n_l=5, n_s=15, c=4)
        state, _ = _init(k, f, y, 5, jitter=0.05)
        got_idx, got, _ = core.greedy_batch(state, 6, objective)  # closed-form loop
        want_idx, want, _ = core.greedy_batch_reference(state, 6, objective, method="direct")
        assert np.asarray(got_idx).tolist() == np.asarray(want_idx).tolist()
        np.testing.assert_allclose(np.asarray(got.mean), np.asarray(want.mean), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(got.cov), np.asarray(want.cov), rtol=1e-10, atol=1e-12)


def test_info_reports_a_failed_factorisation():
    k, f, y = _problem(np.random.default_rng(33))
    _, info = _init(k.astype(np.float32), f.astype(np.float32), y, 6)
    assert bool(info.jitter_ok) and float(info.relative_jitter) == 0.0
    bad = k.astype(np.float32).copy()
    bad[:6, :6] -= 2.0 * np.eye(6, dtype=np.float32) * np.mean(np.diag(bad[:6, :6]))  # indefinite K_LL
    _, info = _init(bad, f.astype(np.float32), y, 6)
    assert not bool(info.jitter_ok)
    np.testing.assert_allclose(float(info.relative_jitter), MAX_RELATIVE_JITTER, rtol=1e-6)


def test_init_from_model_warns_on_a_failed_factor_and_not_on_a_singular_kernel():
    module = models.create("mlp", 3, input_shape=(4,), widths=(16, 16))
    rng = np.random.default_rng(34)
    x = rng.normal(size=(14, 4)).astype(np.float32)
    model = models.as_model(module, module.init(jax.random.PRNGKey(0), x[:1]))
    xl, xu, yl = x[:6].copy(), x[6:], np.array([0, 1, 2, 0, 1, 2])
    xl[3:] = xl[:3]  # duplicated labeled points: K_LL singular, a small jitter is enough
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitterWarning)
        _, info = init_from_model(model, xl, yl, xu)
    assert bool(info.jitter_ok) and 0 < float(info.relative_jitter) <= 1e-3
    xl[0] = np.nan  # a NaN input: no jitter can help; warned, flagged, not raised
    with pytest.warns(JitterWarning, match="not positive semi-definite"):
        _, info = init_from_model(model, xl, yl, xu)
    assert not bool(info.jitter_ok)
