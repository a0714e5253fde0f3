"""Padding the labeled set to a bucket changes no look-ahead number: the padded rows are
decoupled exactly (checked against the unpadded maths in float64), so rounds can share
compiled programs without changing a pick."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal.lookahead import core
from jaxal.lookahead.from_model import init_from_model
from jaxal.ops.buckets import bucket
from models_for_tests import tiny_mlp


def test_bucket_sizes():
    assert [bucket(n) for n in (0, 1, 16, 17, 33, 100, 512, 513, 769, 3000)] == \
        [16, 16, 16, 32, 64, 128, 512, 768, 1024, 3072]
    for n in range(0, 2000, 7):
        b = bucket(n)
        assert b >= n and (b <= max(2 * n, 16) if n <= 512 else b < 1.5 * n)
    with pytest.raises(ValueError):
        bucket(-1)


@pytest.mark.parametrize("q", [1, 3])
def test_padded_init_equals_the_unpadded_maths(q):
    """Garbage in the padded rows (kernel, outputs, labels) has no effect on the state."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        n_l, pad, n_s, c = 7, 9, 11, 3
        feats = rng.standard_normal((n_l + n_s, 30, q))  # full rank: a well-posed solve
        k = np.einsum("iaq,jar->ijqr", feats, feats) if q > 1 else feats[..., 0] @ feats[..., 0].T
        f = rng.standard_normal((n_l + n_s, c))
        y = rng.integers(0, c, n_l)
        ref, ref_info = core.init(k[:n_l, :n_l], k[n_l:, :n_l], k[n_l:, n_l:], f[:n_l], f[n_l:], y)
        # pad L with rows whose kernel entries, outputs and labels are arbitrary
        junk = rng.standard_normal((pad, 30, q))
        g = np.concatenate([feats[:n_l], junk, feats[n_l:]])
        kp = np.einsum("iaq,jar->ijqr", g, g) if q > 1 else g[..., 0] @ g[..., 0].T
        lp = n_l + pad
        fp = np.concatenate([f[:n_l], rng.standard_normal((pad, c))])
        yp = np.concatenate([y, rng.integers(0, c, pad)])
        valid = np.arange(lp) < n_l
        got, info = core.init(kp[:lp, :lp], kp[lp:, :lp], kp[lp:, lp:], fp, f[n_l:], yp, valid_l=valid)
        for a, b in [(got.mean, ref.mean), (got.cov, ref.cov), (got.offset, ref.offset)]:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-10)
        assert float(info.jitter) == pytest.approx(float(ref_info.jitter), rel=1e-12, abs=0)
        assert int(info.num_clamped) == int(ref_info.num_clamped)
        # without the mask the same padded inputs give a different state: the test can fail
        bad, _ = core.init(kp[:lp, :lp], kp[lp:, :lp], kp[lp:, lp:], fp, f[n_l:], yp)
        assert not np.allclose(np.asarray(bad.mean), np.asarray(ref.mean), atol=1e-6)


def test_from_model_padding_keeps_scores_and_greedy_picks():
    model = tiny_mlp(16, d_in=4, num_classes=3)
    rng = np.random.default_rng(1)
    x_l = rng.standard_normal((21, 4)).astype(np.float32)  # bucket 32: 11 padded rows
    y_l = rng.integers(0, 3, 21)
    x_s = rng.standard_normal((40, 4)).astype(np.float32)
    padded, _ = init_from_model(model, x_l, y_l, x_s, pad_labeled=True)
    plain, _ = init_from_model(model, x_l, y_l, x_s, pad_labeled=False)
    # float32 kernels of different shapes: equal up to the solve's round-off (outputs are O(1))
    np.testing.assert_allclose(np.asarray(padded.mean), np.asarray(plain.mean), rtol=1e-3, atol=5e-4)
    np.testing.assert_allclose(np.asarray(padded.cov), np.asarray(plain.cov), rtol=1e-3, atol=5e-4)
    s_pad = np.asarray(core.scores(padded, "mlmoc")[0])
    s_plain = np.asarray(core.scores(plain, "mlmoc")[0])
    np.testing.assert_allclose(s_pad, s_plain, rtol=1e-3, atol=1e-5)
    picks_pad = np.asarray(core.greedy_batch(padded, 5, "mlmoc")[0])
    picks_plain = np.asarray(core.greedy_batch(plain, 5, "mlmoc")[0])
    np.testing.assert_array_equal(picks_pad, picks_plain)
    assert jnp.shape(padded.mean) == (40, 3)
