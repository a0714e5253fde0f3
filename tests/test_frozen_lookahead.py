"""In frozen-encoder mode the head-only NTK is the exact linear kernel, so the NTK
look-ahead must equal actually refitting the linear head with the point added."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.lookahead import Sequential
from jaxal.training import frozen


def _problem(seed=0, n_l=6, n_s=12, d=10, c=3):
    rng = np.random.default_rng(seed)
    h_l, h_s = rng.normal(size=(n_l, d)), rng.normal(size=(n_s, d))
    y_l = rng.integers(0, c, n_l)
    w0 = {"kernel": rng.normal(size=(d, c)) * 0.3, "bias": rng.normal(size=c) * 0.1}
    return h_l, y_l, h_s, w0, c


def _refit_logits(h_l, y_l, h_s, w0, c, extra=None):
    """Minimum-change interpolating refit of the head from w0 (ridge with lam -> 0)."""
    y1 = jax.nn.one_hot(y_l, c, dtype=jnp.float64)
    opts = dict(solver="svd", penalize_bias=True, anchor=w0)
    if extra is None:
        head = frozen.ridge_fit(h_l, y1, 0.0, **opts)
    else:
        i, y = extra
        head = frozen.ridge_refit_with_point(h_l, y1, 0.0, h_s[i], jax.nn.one_hot(y, c, dtype=jnp.float64), **opts)
    return np.asarray(frozen.linear_logits(head, jnp.asarray(h_s)))


def test_lookahead_equals_refitting_the_frozen_head():
    with jax.enable_x64(True):
        h_l, y_l, h_s, w0, c = _problem()
        model = frozen.linear_model(w0)  # identity encoder: inputs are the embeddings
        seq = Sequential(model, h_l, y_l, x_pool=h_s, contraction="single_logit", subset="head", jitter=0.0)
        # f_lin on S is the head refitted on L.
        np.testing.assert_allclose(seq.predictions(), _refit_logits(h_l, y_l, h_s, w0, c), atol=1e-9)
        # Adding a true label equals refitting with that point, for several points in a row.
        state, added = seq, []
        for i, y in [(3, 2), (7, 0), (0, 1)]:
            state = state.add(i, y)
            added.append((i, y))
            h_aug = np.concatenate([h_l, h_s[[a for a, _ in added]]])
            y_aug = np.concatenate([y_l, [b for _, b in added]])
            np.testing.assert_allclose(state.predictions(), _refit_logits(h_aug, y_aug, h_s, w0, c), atol=1e-8)


def test_mlmoc_score_equals_output_change_of_the_refit():
    with jax.enable_x64(True):
        h_l, y_l, h_s, w0, c = _problem(seed=1)
        model = frozen.linear_model(w0)
        seq = Sequential(model, h_l, y_l, x_pool=h_s, contraction="single_logit", subset="head", jitter=0.0)
        f_s = np.asarray(model.logits(jnp.asarray(h_s)))
        brute = []
        for i in range(h_s.shape[0]):
            pseudo = int(np.argmax(f_s[i]))  # the hallucinated label: argmax of the network
            moved = _refit_logits(h_l, y_l, h_s, w0, c, extra=(i, pseudo))
            brute.append(np.linalg.norm(f_s - moved, axis=1).sum())
        np.testing.assert_allclose(seq.scores(), brute, rtol=1e-7)
