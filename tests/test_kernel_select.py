"""jaxal.ops.kernel_select against direct computations: the GP posterior with the N×N
kernel matrix and np.linalg.solve, brute-force greedy log-determinants, numpy
farthest-point and LCMD loops, k-means++ draw frequencies, and a direct GP update for
the look-ahead's closed form."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxal.ops import kernel_select as ks

N, L, P = 14, 4, 5
NOISE = 0.3


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, P)), rng.standard_normal((L, P)), rng.standard_normal((9, P))


def gp_kernel(fp, fl, noise, posterior=True):
    """Posterior kernel over the rows [labeled; pool] ((N+L)×(N+L)), by the GP formula."""
    f = np.concatenate([fl, fp]).astype(np.float64)
    k = f @ f.T
    if not posterior or fl.shape[0] == 0:
        return k
    kl = k[:, : fl.shape[0]]
    return k - kl @ np.linalg.solve(k[: fl.shape[0], : fl.shape[0]] + noise * np.eye(fl.shape[0]), kl.T)


def test_posterior_variance_and_kernel_equal_the_gp_posterior(feats):
    fp, fl, fl_big = feats
    with jax.enable_x64(True):
        for lab in (fl, fl_big, fl[:0]):  # fewer labeled rows than features, more, none
            post = gp_kernel(fp, lab, NOISE)[lab.shape[0]:, lab.shape[0]:]
            var = np.asarray(ks.posterior_variance(fp, lab, NOISE))
            assert var.dtype == np.float64
            np.testing.assert_allclose(var, np.diag(post), rtol=0, atol=1e-8)
            kp = np.asarray(ks.posterior_kernel(fp, fp[:6], lab, NOISE))
            np.testing.assert_allclose(kp, post[:, :6], rtol=0, atol=1e-8)
        psi_p, psi_l = ks.posterior_features(fp, fl, NOISE)
        full = gp_kernel(fp, fl, NOISE)
        np.testing.assert_allclose(np.asarray(psi_l) @ np.asarray(psi_p).T, full[:L, L:], rtol=0, atol=1e-8)
        # the labeled rows' posterior variance is below the noise: σ²·k/(k + σ²) for one row
        assert np.all(np.sum(np.asarray(psi_l) ** 2, axis=1) < NOISE)


def brute_greedy_logdet(post, noise, budget):
    chosen: list[int] = []
    for _ in range(budget):
        best = None
        for c in range(post.shape[0]):
            if c in chosen:
                continue
            idx = chosen + [c]
            val = np.linalg.slogdet(post[np.ix_(idx, idx)] + noise * np.eye(len(idx)))[1]
            if best is None or val > best[0]:
                best = (val, c)
        chosen.append(best[1])
    return chosen


def test_maxdet_is_the_greedy_log_determinant(feats):
    fp, fl, _ = feats
    with jax.enable_x64(True):
        for posterior in (True, False):
            post = gp_kernel(fp, fl, NOISE, posterior)[L:, L:]
            picks = ks.maxdet(jax.random.key(0), fp, fl, 8, noise=NOISE, posterior=posterior)  # 8 > p: past the rank
            assert list(picks) == brute_greedy_logdet(post, NOISE, 8)


def test_maxdiag_is_the_top_posterior_variance(feats):
    fp, fl, _ = feats
    var = np.diag(gp_kernel(fp, fl, NOISE)[L:, L:])
    picks = ks.maxdiag(jax.random.key(0), fp.astype(np.float32), fl.astype(np.float32), 5, noise=NOISE)
    assert list(picks) == list(np.argsort(-var)[:5])
    prior = ks.maxdiag(jax.random.key(0), fp, fl, 5, posterior=False)
    assert list(prior) == list(np.argsort(-np.sum(fp**2, axis=1))[:5])
    # exact ties broken by the key: every tied row can come first
    firsts = {int(ks.maxdiag(jax.random.key(s), np.ones((6, 2)), None, 1, posterior=False)[0]) for s in range(40)}
    assert firsts == set(range(6))


def sqdist_from_kernel(k):
    d = np.diag(k)
    return np.maximum(d[:, None] + d[None, :] - 2 * k, 0.0)


def numpy_farthest(k, n_lab, budget):
    d2 = sqdist_from_kernel(k)
    centres = list(range(n_lab))
    picks = []
    for _ in range(budget):
        m = d2[:, centres].min(axis=1)
        m[:n_lab] = -1
        m[[n_lab + p for p in picks]] = -1
        c = int(np.argmax(m))
        picks.append(c - n_lab)
        centres.append(c)
    return picks


def numpy_lcmd(k, n_lab, budget):
    """The documented rule: nearest centre (earliest on ties), the cluster with the largest
    sum of squared distances (earliest on ties), its point farthest from the centre."""
    d2 = sqdist_from_kernel(k)
    n = k.shape[0]
    centres = list(range(n_lab))
    picks = []
    for _ in range(budget):
        pool = np.arange(n_lab, n)
        dc = d2[np.ix_(pool, centres)]
        assign = np.argmin(dc, axis=1)
        mind = dc[np.arange(pool.size), assign]
        sizes = np.zeros(len(centres))
        np.add.at(sizes, assign, mind)
        best = int(np.argmax(sizes))
        score = np.where((assign == best) & ~np.isin(pool - n_lab, picks), mind, -np.inf)
        c = int(np.argmax(score))
        picks.append(c)
        centres.append(n_lab + c)
    return picks


def test_maxdist_and_lcmd_equal_numpy_loops(feats):
    fp, fl, _ = feats
    fp32, fl32 = fp.astype(np.float32), fl.astype(np.float32)
    key = jax.random.key(3)
    for posterior in (True, False):
        k = gp_kernel(fp, fl, NOISE, posterior)
        # budget 5: k_center_greedy compiles once per budget, and the strategy tests use 5 too
        assert list(ks.maxdist(key, fp32, fl32, 5, noise=NOISE, posterior=posterior)) == numpy_farthest(k, L, 5)
        assert list(ks.lcmd(key, fp32, fl32, 7, noise=NOISE, posterior=posterior)) == numpy_lcmd(k, L, 7)
    # no labeled rows: the first pick is random, then the rules apply (distinct, valid)
    assert len(set(ks.maxdist(key, fp32, None, 5, noise=NOISE))) == 5
    for sel in (ks.lcmd, ks.kmeanspp):
        assert sorted(sel(key, fp32, None, N, noise=NOISE)) == list(range(N))


def test_lcmd_picks_inside_the_largest_cluster():
    # 1-D points (in the fixture's shapes, so no new compilation): labeled centres at 0 and
    # 10 (two more far away, without members); five points near 0 (cluster size
    # 1+1.44+1.21+0.81+1.1025 = 5.5625), one at 13 (centre 10's cluster, size 9), the rest on 0
    fl = np.zeros((L, P), np.float32)
    fl[:, 0] = [0.0, 10.0, 100.0, -100.0]
    fp = np.zeros((N, P), np.float32)
    fp[:6, 0] = [1.0, -1.2, 1.1, 0.9, -1.05, 13.0]
    assert ks.lcmd(jax.random.key(0), fp, fl, 1, posterior=False)[0] == 5  # the larger cluster's point
    fp[5, 0] = 12.0  # size 4 < 5.5625: LCMD takes the centre-0 cluster's farthest point, MaxDist still 12
    assert ks.lcmd(jax.random.key(0), fp, fl, 1, posterior=False)[0] == 1
    assert ks.maxdist(jax.random.key(0), fp, fl, 5, posterior=False)[0] == 5


def numpy_kmeanspp(key, k, n_lab, budget):
    """D² sampling re-implemented: the same uniforms (``key, sub = split(key)``, one
    ``uniform(sub)`` a draw), the inverse CDF of ``D² / ΣD²`` from the GP kernel in float64."""
    d2 = sqdist_from_kernel(k)
    centres, picks = list(range(n_lab)), []
    for _ in range(budget):
        key, sub = jax.random.split(key)
        u = float(jax.random.uniform(sub, dtype=np.float32))
        w = d2[n_lab:, centres].min(axis=1) if centres else np.ones(k.shape[0] - n_lab)
        w[picks] = 0.0
        c = int(np.searchsorted(np.cumsum(w), u * w.sum(), side="right"))
        picks.append(c)
        centres.append(n_lab + c)
    return picks


def test_kmeanspp_draws_by_d2_and_never_a_point_on_a_centre(feats):
    fp, fl, _ = feats
    fp32, fl32 = fp.astype(np.float32), fl.astype(np.float32)
    for s in (0, 1, 2):  # with a fixed key: the numpy draws from D² / ΣD², with and without labeled rows
        key = jax.random.key(s)
        assert list(ks.kmeanspp(key, fp32, fl32, 6, noise=NOISE)) == numpy_kmeanspp(key, gp_kernel(fp, fl, NOISE), L, 6)
        assert list(ks.kmeanspp(key, fp32, fl32[:0], 6, noise=NOISE)) == numpy_kmeanspp(key, fp @ fp.T, 0, 6)
    # pool = 8 distinct points, copies of 2 labeled rows (D² = 0), copies of pool rows 0-3
    pool = np.concatenate([fp32[:8], fl32[:2], fp32[:4]])
    for s in range(4):
        picks = ks.kmeanspp(jax.random.key(s), pool, fl32, 8, noise=NOISE)
        assert len(set(picks)) == 8 and not {8, 9} & set(picks)
        assert sorted(p - 10 if p >= 10 else p for p in picks) == list(range(8))  # each distinct point once


def test_expected_output_change_equals_a_direct_gp_update(feats):
    fp, fl, _ = feats
    rng = np.random.default_rng(1)
    y_lab = rng.standard_normal(L)
    with jax.enable_x64(True):
        k = gp_kernel(fp, fl, 0.0, posterior=False)  # prior kernel over [labeled; pool]
        scores = np.asarray(ks.expected_output_change(fp, fl, NOISE))
        sub = np.asarray(ks.expected_output_change(fp, fl, NOISE, features_eval=fp[:5]))

    def mean_after(obs, y):
        kk = k[np.ix_(obs, obs)] + NOISE * np.eye(len(obs))
        return k[L:, obs] @ np.linalg.solve(kk, y)

    mu = mean_after(list(range(L)), y_lab)  # GP mean on the pool given the labeled rows
    post = gp_kernel(fp, fl, NOISE)[L:, L:]
    for j in (0, 5, 11):
        s2 = post[j, j] + NOISE  # predictive variance of y' at x_j
        for y in (mu[j] - 1.3, mu[j] + 0.4, mu[j] + 2.0):  # the linear update, by a direct solve
            delta = mean_after(list(range(L)) + [L + j], np.append(y_lab, y)) - mu
            np.testing.assert_allclose(delta, post[:, j] * (y - mu[j]) / s2, rtol=0, atol=1e-8)
        # E over y' ~ N(mu_j, s2) of mean_x |Δf(x)|, by Monte Carlo over y'
        z = rng.standard_normal(200_000) * np.sqrt(s2)
        mc = np.mean(np.abs(z)) * np.mean(np.abs(post[:, j])) / s2
        np.testing.assert_allclose(scores[j], mc, rtol=1e-2)
        np.testing.assert_allclose(sub[j], np.sqrt(2 / np.pi) * np.mean(np.abs(post[:5, j])) / np.sqrt(s2), atol=1e-8)


def test_bad_inputs_raise(feats):
    fp, fl, _ = feats
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="noise"):
        ks.maxdet(key, fp, fl, 2, noise=0.0)
    with pytest.raises(ValueError, match="noise"):
        ks.posterior_variance(fp, fl, -1.0)
    with pytest.raises(ValueError, match="columns"):
        ks.lcmd(key, fp, fl[:, :3], 2, noise=NOISE)
    with pytest.raises(ValueError, match="budget"):
        ks.maxdist(key, fp, fl, N + 1, noise=NOISE)
    bad = fp.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ks.kmeanspp(key, bad, fl, 2, noise=NOISE)
    with pytest.raises(ValueError, match="feature matrix"):
        ks.maxdiag(key, fp[0], fl, 1, noise=NOISE)
