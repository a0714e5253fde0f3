"""CRC: λ⁺_min scores, dual = primal, Proposition 2, Algorithm 1, full-NTK variant."""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxal
from jaxal.model import from_functions
from jaxal.spectral import default_rtol, lambda_plus_min
from jaxal.strategies.base import make_context
from jaxal.strategies.crc import crc, group_scores, random_groups

C = 3


def feature_model(d: int, seed: int = 0, dtype=jnp.float32):
    """Identity body (inputs are the features h) and a Dense head with C logits."""
    rng = np.random.default_rng(seed)
    head = {"kernel": jnp.asarray(rng.standard_normal((d, C)), dtype), "bias": jnp.zeros(C, dtype)}
    return from_functions(lambda p, x: x, lambda p, h: h @ p["kernel"] + p["bias"], {"body": {}, "head": head}, dense_head=True)


class TinyMLP(nn.Module):
    def setup(self):
        self.hidden = nn.Dense(5)
        self.head = nn.Dense(C)

    def features(self, x):
        return jnp.tanh(self.hidden(x))

    def __call__(self, x):
        return self.head(self.features(x))


def tiny_linen(seed: int = 0):
    net = TinyMLP()
    variables = net.init(jax.random.PRNGKey(seed), jnp.ones((1, 4)))
    return jaxal.from_linen(net, variables)


def reference_score(k: np.ndarray, rtol: float, rank) -> float:
    """λ⁺_min of an explicit PSD matrix with numpy (float64), same zero rule."""
    e = np.linalg.eigvalsh(k)
    thr = rtol * max(e[-1], 0.0)
    if rank is None:
        pos = e[e > thr]
        return float(pos.min()) if pos.size else 0.0
    v = e[len(e) - rank]
    return float(v) if v > thr else 0.0


def test_lambda_plus_min_rules():
    e = jnp.asarray([[-1e-9, 0.0, 0.5, 2.0, 4.0]])
    assert float(lambda_plus_min(e, 1e-6)[0]) == 0.5
    assert float(lambda_plus_min(e, 1e-6, rank=2)[0]) == 2.0
    assert float(lambda_plus_min(e, 1e-6, rank=5)[0]) == 0.0  # below threshold -> exactly 0
    assert float(lambda_plus_min(jnp.zeros((1, 3)), 1e-6)[0]) == 0.0


@pytest.mark.parametrize("n_l,g", [(3, 2), (20, 3)])  # n = |L|+G below and above p = d+1 = 9
@pytest.mark.parametrize("spectrum", ["generic", "positive"])
def test_dual_equals_primal(n_l, g, spectrum):
    rng = np.random.default_rng(1)
    x_l, x_pool = rng.standard_normal((n_l, 8)), rng.standard_normal((12, 8))
    groups = random_groups(jax.random.PRNGKey(0), 12, g)
    with jax.enable_x64(True):
        m64 = feature_model(8, dtype=jnp.float64)
        kw = dict(num_classes=C, spectrum=spectrum, dtype=jnp.float64)
        sd, infod = group_scores(m64, x_l, x_pool, groups, method="dual", **kw)
        sp, infop = group_scores(m64, x_l, x_pool, groups, method="primal", **kw)
        assert infod["method"] == "dual" and infop["method"] == "primal"
        assert np.all(np.asarray(sd) > 0)
        np.testing.assert_allclose(np.asarray(sd), np.asarray(sp), rtol=1e-10)
        np.testing.assert_allclose(infod["labeled_score"], infop["labeled_score"], rtol=1e-10)
    m32 = feature_model(8)
    x_l32, x_pool32 = x_l.astype(np.float32), x_pool.astype(np.float32)
    sd32, _ = group_scores(m32, x_l32, x_pool32, groups, num_classes=C, spectrum=spectrum, method="dual")
    sp32, _ = group_scores(m32, x_l32, x_pool32, groups, num_classes=C, spectrum=spectrum, method="primal")
    np.testing.assert_allclose(np.asarray(sd32), np.asarray(sp32), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(sd32), np.asarray(sd), rtol=1e-4)


def test_primal_matches_numpy_eigvalsh_of_explicit_kernel():
    """Primal scores = numpy eigvalsh of K = C·(HHᵀ + 1) built by hand, both zero rules."""
    rng = np.random.default_rng(2)
    d, n_l, g = 4, 9, 2  # n = 11 > p = 5: the primal matrix has 6 zero eigenvalues
    x_l, x_pool = rng.standard_normal((n_l, d)), rng.standard_normal((8, d))
    groups = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    with jax.enable_x64(True):
        model = feature_model(d, dtype=jnp.float64)
        for spectrum in ("generic", "positive"):
            s, info = group_scores(model, x_l, x_pool, groups, num_classes=C, method="primal", spectrum=spectrum, dtype=jnp.float64)
            assert info["rtol"] == default_rtol(jnp.float64, n_l + g, d + 1)
            for b, grp in enumerate(groups):
                x = np.concatenate([x_l, x_pool[grp]])
                k = C * (x @ x.T + 1.0)
                e = np.linalg.eigvalsh(k)
                assert np.sum(e < 1e-8 * e[-1]) == n_l + g - (d + 1)  # the zeros the dual never shows
                rank = None if spectrum == "positive" else d + 1
                np.testing.assert_allclose(float(s[b]), reference_score(k, info["rtol"], rank), rtol=1e-9)


def test_last_layer_kernel_matches_brute_force_head_jacobian():
    """K = C·(h·h' + 1) is the trace NTK of the Dense head: compare with a Jacobian NTK."""
    model = tiny_linen()
    rng = np.random.default_rng(3)
    x_l, x_pool = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32)
    groups = np.array([[0, 1], [2, 3]])
    s, info = group_scores(model, x_l, x_pool, groups, num_classes=C, method="primal", spectrum="positive")
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), model.params)

        def head_logits(ph, x):
            return model.apply({"body": p64["body"], "head": ph}, jnp.asarray(x, jnp.float64))

        for b, grp in enumerate(groups):
            x = np.concatenate([x_l, x_pool[grp]])
            jac = jax.jacrev(head_logits)(p64["head"], x)  # leaves [n, C, ...]
            flat = jnp.concatenate([j.reshape(j.shape[0], C, -1) for j in jax.tree_util.tree_leaves(jac)], axis=-1)
            k = np.asarray(jnp.einsum("acp,bcp->ab", flat, flat))
            np.testing.assert_allclose(float(s[b]), reference_score(k, info["rtol"], None), rtol=1e-4)


def test_full_kernel_matches_brute_force_jacobian_ntk():
    ntk = pytest.importorskip("jaxal.ntk")
    if not hasattr(ntk, "kernel"):
        pytest.skip("jaxal.ntk.kernel not available yet")
    model = tiny_linen(1)
    rng = np.random.default_rng(4)
    x_l, x_pool = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    groups = np.array([[0, 1], [2, 3], [4, 5]])
    s, info = group_scores(model, x_l, x_pool, groups, num_classes=C, kernel="full")
    assert info["method"] == "primal" and info["rank"] == 5  # n = 5 points < 43 parameters
    flat0, unravel = jax.flatten_util.ravel_pytree(model.params)
    for b, grp in enumerate(groups):
        x = jnp.concatenate([x_l, x_pool[grp]])
        jac = jax.jacrev(lambda th: model.apply(unravel(th), x))(flat0)  # [n, C, P]
        k = np.asarray(jnp.einsum("acp,bcp->ab", jac, jac), np.float64)
        np.testing.assert_allclose(float(s[b]), reference_score(k, info["rtol"], 5), rtol=2e-3)
    with pytest.raises(ValueError, match="dual"):
        group_scores(model, x_l, x_pool, groups, num_classes=C, kernel="full", method="dual")


def test_proposition_2_degenerate_groups_score_zero():
    """A duplicate or an already-labeled point in the group: score 0 (|L|+G ≤ d+1)."""
    rng = np.random.default_rng(5)
    x_l = rng.standard_normal((3, 8)).astype(np.float32)
    a, b, c = rng.standard_normal((3, 8)).astype(np.float32)
    x_pool = np.stack([a, a, x_l[0], b, b, c])
    groups = np.array([[0, 1], [2, 3], [3, 5]])  # duplicate, labeled point, non-degenerate
    model = feature_model(8)
    for method in ("primal", "dual"):
        s, _ = group_scores(model, x_l, x_pool, groups, num_classes=C, method=method)
        assert float(s[0]) == 0.0 and float(s[1]) == 0.0 and float(s[2]) > 0.0
    # the "positive" rule ignores the lost rank: it does not penalise degenerate groups
    s_pos, _ = group_scores(model, x_l, x_pool, groups, num_classes=C, spectrum="positive")
    assert float(s_pos[0]) > 0.0
    # so CRC never picks a degenerate group while a non-degenerate one exists
    for seed in range(3):
        ctx = make_context(model, x_labeled=x_l, y_labeled=np.zeros(3, int), x_pool=np.stack([a, a, b, c]))
        picked = set(crc(jax.random.PRNGKey(seed), ctx, 2, group_size=2).indices.tolist())
        assert picked != {0, 1}
        ctx = make_context(model, x_labeled=x_l, y_labeled=np.zeros(3, int), x_pool=np.stack([x_l[1], b]))
        assert crc(jax.random.PRNGKey(seed), ctx, 1, group_size=1).indices.tolist() == [1]


def test_group_size_equal_to_budget_picks_one_best_group():
    model = feature_model(6)
    rng = np.random.default_rng(6)
    x_l, x_pool = rng.standard_normal((10, 6)).astype(np.float32), rng.standard_normal((17, 6)).astype(np.float32)
    ctx = make_context(model, x_labeled=x_l, y_labeled=np.zeros(10, int), x_pool=x_pool)
    key = jax.random.PRNGKey(7)
    q = crc(key, ctx, 4)  # default group_size = budget
    groups = random_groups(jax.random.split(key)[0], 17, 4)
    s, _ = group_scores(model, x_l, x_pool, groups, num_classes=C)
    assert q.info["num_groups"] == 4 and q.info["group_size"] == 4 and len(q.info["group_scores"]) == 1
    np.testing.assert_array_equal(q.indices, groups[int(np.argmax(np.asarray(s)))])
    np.testing.assert_allclose(q.info["group_scores"][0], float(np.max(np.asarray(s))), rtol=1e-6)


def test_bad_options_raise():
    model = feature_model(4)
    ctx = make_context(model, x_labeled=np.ones((2, 4)), y_labeled=np.zeros(2, int), x_pool=np.eye(4).repeat(3, 0))
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="group_size=4 must divide"):
        crc(key, ctx, 6, group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        crc(key, ctx, 6, group_size=0)
    with pytest.raises(ValueError, match="kernel"):
        crc(key, ctx, 2, kernel="middle")
    with pytest.raises(ValueError, match="together"):
        crc(key, ctx, 3, per_class=1)
    with pytest.raises(ValueError, match="per_class"):
        crc(key, ctx, 6, pool_labels=np.arange(12) % C, per_class=1, group_size=2)
    with pytest.raises(ValueError, match="max_groups"):
        crc(key, ctx, 6, group_size=2, max_groups=2)


def test_pseudo_al_groups_are_class_balanced():
    model = feature_model(5)
    rng = np.random.default_rng(8)
    x_pool = rng.standard_normal((30, 5)).astype(np.float32)
    labels = np.arange(30) % C
    ctx = make_context(model, x_labeled=rng.standard_normal((4, 5)), y_labeled=np.zeros(4, int), x_pool=x_pool)
    q = crc(jax.random.PRNGKey(1), ctx, 12, pool_labels=labels, per_class=2)
    assert q.info["uses_true_labels"] and q.info["group_size"] == 6 and len(q.info["group_scores"]) == 2
    for grp in q.indices.reshape(2, 6):
        np.testing.assert_array_equal(np.bincount(labels[grp], minlength=C), [2, 2, 2])


def test_select_by_name_on_linen_model():
    model = tiny_linen(2)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    q = jaxal.select(
        "crc", jax.random.PRNGKey(0), model, x_labeled=x[:3], y_labeled=np.array([0, 1, 2]),
        x_pool=x[3:], budget=6, group_size=3, return_query=True,
    )
    assert q.indices.shape == (6,) and len(set(q.indices.tolist())) == 6
    assert q.info["method"] == "primal"  # n = 6 ≤ d+1 = 6: auto keeps the primal
    assert q.info["labeled_score"] > 0 and len(q.info["group_scores"]) == 2
    assert q.info["group_scores"][0] >= q.info["group_scores"][1] > 0


def test_cli_run_with_crc_group_size(tmp_path):
    cli = pytest.importorskip("jaxal.cli")
    import json

    argv = ["run", "--strategy", "crc", "--crc-group-size", "5", "--budget", "10", "--rounds", "1",
            "--initial", "10", "--epochs", "1", "--widths", "8", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in open(tmp_path / "crc" / "seed0" / "records.jsonl")]
    info = records[-1]["info"]
    assert info["group_size"] == 5 and len(info["group_scores"]) == 2 and len(records[-1]["chosen"]) == 10
