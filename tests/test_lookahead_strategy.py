"""Look-ahead strategies and the Sequential object on a tiny linen MLP."""

import jax
import numpy as np
import pytest

import jaxal
from jaxal import models
from jaxal.lookahead import Sequential, core


def _setup(seed=0, n_l=6, n_u=12, d=4, c=3):
    module = models.create("mlp", c, input_shape=(d,), widths=(16, 16))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_l + n_u, d)).astype(np.float32)
    y = rng.integers(0, c, size=n_l)
    model = models.as_model(module, module.init(jax.random.PRNGKey(seed), x[:1]))
    return model, x[:n_l], y, x[n_l:]


def test_select_mlmoc_topk_matches_core_scores_and_reports_info():
    model, xl, yl, xu = _setup()
    q = jaxal.select("mlmoc", jax.random.PRNGKey(0), model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=3,
                     return_query=True)
    assert len(set(q.indices.tolist())) == 3
    assert {"jitter", "num_clamped", "variance_floor"} <= set(q.info)
    k = jaxal.ntk.kernel(model, np.concatenate([xl, xu]), contraction="single_logit")
    state, _ = core.init(k[:6, :6], k[6:, :6], k[6:, 6:], model.logits(xl), model.logits(xu), yl)
    s = np.asarray(core.scores(state)[0])
    assert set(q.indices.tolist()) == set(np.argsort(-s)[:3].tolist())


@pytest.mark.parametrize(
    "name,options",
    [
        ("emoc", dict(batch="greedy", eval_size=8)),
        ("eer", dict(probability="simplex", subset="head")),
        ("flip_rate", dict(approximation="infinite")),
        ("mlmoc", dict(approximation="sgd")),
        ("mlmoc", dict(contraction="full", batch="greedy")),
    ],
)
def test_options_give_distinct_valid_indices(name, options):
    model, xl, yl, xu = _setup(1)
    idx = jaxal.select(name, jax.random.PRNGKey(1), model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=4, **options)
    assert len(set(np.asarray(idx).tolist())) == 4 and np.all((idx >= 0) & (idx < len(xu)))


def test_bad_options_name_the_argument():
    model, xl, yl, xu = _setup()
    for opts, word in [(dict(batch="nope"), "batch"), (dict(approximation="nope"), "approximation"),
                       (dict(approximation="sgd", batch="greedy"), "greedy"), (dict(eval_size=2), "eval_size")]:
        with pytest.raises(ValueError, match=word):
            jaxal.select("mlmoc", jax.random.PRNGKey(0), model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=3,
                         **opts)


def test_sequential_add_equals_fresh_solve_with_the_point_labeled():
    with jax.enable_x64(True):
        model, xl, yl, xu = _setup(2)
        xl, xu = xl.astype(np.float64), xu.astype(np.float64)
        seq = Sequential(model, xl, yl, x_pool=xu)
        i = seq.best()
        seq2 = seq.add(i, 1)
        assert not seq.queried[i] and seq2.queried[i]  # a new object; the old one is unchanged
        fresh = Sequential(model, np.concatenate([xl, xu[i:i + 1]]), np.append(yl, 1), x_pool=xu)
        np.testing.assert_allclose(seq2.predictions(), fresh.predictions(), atol=1e-8)
        np.testing.assert_allclose(np.asarray(seq2.state.cov), np.asarray(fresh.state.cov), atol=1e-8)
        assert seq2.best() != i


def test_sequential_strategy_asks_the_oracle_after_each_pick():
    model, xl, yl, xu = _setup(3)
    asked = []

    def oracle(i):
        asked.append(i)
        return 0

    ctx = jaxal.strategies.base.make_context(model, x_labeled=xl, y_labeled=yl, x_pool=xu)
    q = jaxal.strategies.sequential_mode("mlmoc")(jax.random.PRNGKey(0), ctx, 4, oracle)
    assert asked == q.indices.tolist() and len(set(asked)) == 4 and q.info["labels"] == [0, 0, 0, 0]


def test_linearised_reference_scores_only_the_candidate_term():
    """reference='linearised': score(j) = Σ_x ‖f_lin^{+j}(x) − f_lin(x)‖ with the
    pseudo-label argmax f_lin(x_j), each f_lin a direct float64 kernel-regression solve."""
    with jax.enable_x64(True):
        model, xl, yl, xu = _setup(3, n_l=5, n_u=10)
        model = model.replace_params(jax.tree.map(lambda p: p.astype(np.float64), model.params))
        xl, xu = xl.astype(np.float64), xu.astype(np.float64)
        x = np.concatenate([xl, xu])
        k = np.asarray(jaxal.ntk.kernel(model, x, contraction="single_logit"))
        f = np.asarray(model.logits(x))
        n_l, c = len(xl), f.shape[1]

        def f_lin(rows, targets):  # kernel regression of the residuals on `rows`, added to f
            resid = targets - f[rows]
            return f + k[:, rows] @ np.linalg.solve(k[np.ix_(rows, rows)], resid)

        y_l = np.eye(c)[yl]
        base = f_lin(list(range(n_l)), y_l)[n_l:]
        brute = []
        for j in range(len(xu)):
            y_j = np.eye(c)[np.argmax(base[j])]
            moved = f_lin(list(range(n_l)) + [n_l + j], np.concatenate([y_l, y_j[None]]))[n_l:]
            brute.append(np.sum(np.linalg.norm(moved - base, axis=1)))
        q = jaxal.select("mlmoc", jax.random.PRNGKey(0), model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=3,
                         reference="linearised", return_query=True)
        assert set(q.indices.tolist()) == set(np.argsort(-np.asarray(brute))[:3].tolist())
        net = jaxal.select("mlmoc", jax.random.PRNGKey(0), model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=3,
                           reference="network")
        assert len(set(np.asarray(net).tolist())) == 3
        with pytest.raises(ValueError, match="reference"):
            jaxal.select("mlmoc", jax.random.PRNGKey(0), model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=3,
                         reference="nope")
