"""CRC: λ⁺_min scores, dual = primal, Proposition 2, Algorithm 1, full-NTK variant,
per-group ranks on trained (low-rank) features, tie reporting, default group size."""

import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import NnxTinyMLP, linear_head, tiny_mlp

import jaxal
from jaxal import data, models
from jaxal.model import from_functions
from jaxal.ntk import head_features
from jaxal.ops.spectral import feature_rtol, lambda_plus_min
from jaxal.strategies.base import make_context
from jaxal.strategies.crc import CRCTieWarning, crc, default_group_size, group_scores, random_groups
from jaxal.training import train

C = 3


def feature_model(d: int, seed: int = 0, dtype=jnp.float32):
    """Identity body (inputs are the features h) and a Dense head with C logits."""
    rng = np.random.default_rng(seed)
    head = {"kernel": jnp.asarray(rng.standard_normal((d, C)), dtype), "bias": jnp.zeros(C, dtype)}
    return from_functions(lambda p, x: x, linear_head, {"body": {}, "head": head}, dense_head=True)


def tiny_linen(seed: int = 0):
    """tanh(Dense(5)) features on 4 inputs, a Dense(C) head; the layer is named 'hidden'
    as when these tests were written (the name seeds its init)."""
    return tiny_mlp(5, d_in=4, num_classes=C, seed=seed, body_name="hidden")


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
            assert info["rtol"] == feature_rtol(jnp.float64, n_l + g, d + 1)
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
    s, info = group_scores(model, x_l, x_pool, groups, num_classes=C, subset="all")
    assert info["method"] == "primal" and info["rank"] == 5  # n = 5 points < 43 parameters
    flat0, unravel = jax.flatten_util.ravel_pytree(model.params)
    for b, grp in enumerate(groups):
        x = jnp.concatenate([x_l, x_pool[grp]])
        jac = jax.jacrev(lambda th: model.apply(unravel(th), x))(flat0)  # [n, C, P]
        k = np.asarray(jnp.einsum("acp,bcp->ab", jac, jac), np.float64)
        np.testing.assert_allclose(float(s[b]), reference_score(k, info["rtol"], 5), rtol=2e-3)
    with pytest.raises(ValueError, match="dual"):
        group_scores(model, x_l, x_pool, groups, num_classes=C, subset="all", method="dual")


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
    q = crc(key, ctx, 4, group_size=4)  # one group of the whole budget
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
    with pytest.raises(ValueError, match="subset"):
        crc(key, ctx, 2, subset="middle")
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

    argv = ["run", "--strategy", "crc", "--option", "crc.group_size=5", "--budget", "10", "--rounds", "1",
            "--initial", "10", "--epochs", "1", "--widths", "8", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in open(tmp_path / "crc" / "seed0" / "records.jsonl")]
    info = records[-1]["info"]
    assert info["group_size"] == 5 and len(info["group_scores"]) == 2 and len(records[-1]["chosen"]) == 10


def test_deprecated_crc_flag_and_kernel_option_still_work():
    """The 0.1 spellings map onto the new ones, with a DeprecationWarning."""
    from jaxal.cli import _configs, build_parser

    args = build_parser().parse_args(["run", "--strategy", "crc,entropy", "--crc-group-size", "5", "--budget", "10"])
    with pytest.warns(DeprecationWarning, match="crc.group_size"):
        configs = _configs(args)
    assert {c.strategy: dict(c.strategy_options) for c in configs} == {"crc": {"group_size": 5}, "entropy": {}}
    model = feature_model(4)
    x_l = np.eye(4, dtype=np.float32)[:2]
    x_pool = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    groups = np.arange(12).reshape(6, 2)
    new, _ = group_scores(model, x_l, x_pool, groups, num_classes=C, subset="all")
    with pytest.warns(DeprecationWarning, match="subset='all'"):
        old, _ = group_scores(model, x_l, x_pool, groups, num_classes=C, kernel="full")
    np.testing.assert_array_equal(old, new)


# --- per-group ranks ---------------------------------------------------------------


def brute_force_scores(phi_l, phi_pool, groups, num_selected, feat_eps, scale=C):
    """Independent reference: per group, the float64 spectrum of the PRIMAL Gram
    ``scale·ΦΦᵀ`` over L ∪ g (eigvalsh, or squared singular values of Φ when n is
    large), its rank by ``numpy.linalg.matrix_rank`` on Φ with the tolerance
    ``sqrt(max(eps²·m, eps₆₄·m))·σ_max`` (m = max(n, p)), k = the num_selected-th
    largest rank, score = k-th largest eigenvalue (0 for a group of rank below k)."""
    phi_l, phi_pool = np.asarray(phi_l, np.float64), np.asarray(phi_pool, np.float64)
    spectra, ranks = [], []
    for grp in groups:
        phi = np.concatenate([phi_l, phi_pool[grp]])
        m = max(phi.shape)
        sv = np.linalg.svd(phi, compute_uv=False)
        e = np.sort(np.linalg.eigvalsh(scale * phi @ phi.T))[::-1] if phi.shape[0] <= 600 else scale * sv**2
        tol = np.sqrt(max(feat_eps**2 * m, np.finfo(np.float64).eps * m)) * sv[0]
        ranks.append(np.linalg.matrix_rank(phi, tol=tol))
        spectra.append(e)
    ranks = np.asarray(ranks)
    k = int(np.sort(ranks)[::-1][num_selected - 1])
    scores = np.array([e[k - 1] if r >= k else 0.0 for e, r in zip(spectra, ranks)])
    lam_max = max(e[0] for e in spectra)
    return scores, ranks, k, lam_max


def features_l_pool(model, x_l, x_pool, groups):
    """``φ = [h, 1]`` (head_features) of L and of the pool, from one forward pass over
    L and the grouped rows (the shape group_scores uses, so no extra compile)."""
    flat = np.asarray(groups).reshape(-1)
    phi = np.asarray(head_features(model, np.concatenate([x_l, x_pool[flat]])), np.float64)
    phi_pool = np.zeros((x_pool.shape[0], phi.shape[1]))
    phi_pool[flat] = phi[len(x_l):]
    return phi[: len(x_l)], phi_pool


def test_shared_rank_is_the_rank_num_selected_groups_reach():
    """Labeled points span 5 of 8 feature directions; groups add 2, 1 or 0 new ones."""
    rng = np.random.default_rng(11)
    d = 7  # p = d + 1 = 8 with the constant feature
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    x_l = rng.standard_normal((12, 4)) @ basis[:, :4].T  # with the constant: rank 5
    inside = lambda m: rng.standard_normal((m, 4)) @ basis[:, :4].T  # noqa: E731
    x_pool = np.concatenate([
        inside(1) + 3 * basis[:, 4], inside(1) + 3 * basis[:, 5],  # group 0: +2 directions
        inside(1) + 3 * basis[:, 6], inside(1),  # group 1: +1 direction
        inside(2),  # group 2: nothing new
        inside(1) + 3 * basis[:, 4], inside(1) + 3 * basis[:, 6],  # group 3: +2 directions
    ]).astype(np.float32)
    x_l = x_l.astype(np.float32)
    groups = np.arange(8).reshape(4, 2)
    model = feature_model(d)
    phi_l, phi_p = head_features(model, x_l), head_features(model, x_pool)
    eps = float(np.finfo(np.float32).eps)
    for num_selected, expected_k in ((1, 7), (2, 7), (3, 6), (4, 5)):
        ref, ref_ranks, k, _ = brute_force_scores(phi_l, phi_p, groups, num_selected, eps)
        assert k == expected_k and list(ref_ranks) == [7, 6, 5, 7]
        for method in ("dual", "primal"):
            s, info = group_scores(model, x_l, x_pool, groups, num_classes=C, method=method, num_selected=num_selected)
            assert info["rank"] == k and (info["rank_min"], info["rank_max"]) == (5, 7)
            np.testing.assert_allclose(s, ref, rtol=1e-6, atol=0)
            assert info["zero_groups"] == int(np.sum(ref_ranks < k))
    # the literal rule scores every group by its own smallest significant eigenvalue: all positive
    s_pos, info = group_scores(model, x_l, x_pool, groups, num_classes=C, spectrum="positive")
    assert info["rank"] is None and np.all(s_pos > 0)


@pytest.fixture(scope="module")
def trained():
    """Digits with a noisy copy of every training image (2,694 points, so |L| = 2,000
    fits), an MLP with 256 features and a CNN with 64, both trained briefly."""
    ds = data.load("digits", seed=0, copies=2, copy_noise=0.01)
    idx = np.asarray(jax.random.permutation(jax.random.key(1), ds.x_train.shape[0]))[:300]
    out = {}
    for name, opts in (("mlp", {"widths": (256,)}), ("cnn", {"channels": (8,), "hidden": 64})):
        module = models.create(name, 10, input_shape=(64,), **opts)
        v = train.init_variables(jax.random.key(0), module, ds.x_train[:1])
        res = train.train(jax.random.key(2), module, v, ds.x_train[idx], ds.y_train[idx], 10,
                          train.TrainConfig(max_epochs=5, batch_size=64))
        out[name] = models.as_model(module, res.variables)
    return ds, out


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("n_l", [40, 500, 2000])
def test_trained_features_scores_match_brute_force_and_separate_groups(trained, arch, n_l):
    ds, nets = trained
    model = nets[arch]
    perm = np.asarray(jax.random.permutation(jax.random.key(n_l), ds.x_train.shape[0]))
    n_groups, num_selected = 8, 4
    x_l, x_pool = ds.x_train[perm[:n_l]], ds.x_train[perm[n_l : n_l + 5 * n_groups]]
    groups = np.arange(5 * n_groups).reshape(n_groups, 5)
    s, info = group_scores(model, x_l, x_pool, groups, num_classes=10, num_selected=num_selected)
    eps = float(np.finfo(np.float32).eps)
    ref, ref_ranks, k, lam_max = brute_force_scores(*features_l_pool(model, x_l, x_pool, groups), groups,
                                                    num_selected, eps, scale=10)
    assert info["rank"] == k and info["rank_min"] == ref_ranks.min() and info["rank_max"] == ref_ranks.max()
    atol = 100 * np.finfo(np.float64).eps * (n_l + 5) * lam_max  # float64 eigensolvers' absolute accuracy
    np.testing.assert_allclose(s, ref, rtol=1e-6, atol=atol)
    if n_l <= 500:  # the other side agrees too
        other = "dual" if info["method"] == "primal" else "primal"
        s2, info2 = group_scores(model, x_l, x_pool, groups, num_classes=10, num_selected=num_selected, method=other)
        assert info2["rank"] == k
        np.testing.assert_allclose(s2, ref, rtol=1e-6, atol=atol)
    # not all equal, never all zero, and CRC's pick is decided by the scores alone
    top = np.sort(s)[::-1][:num_selected]
    assert np.all(top > 0) and np.unique(top).size == num_selected and np.unique(s).size > 1
    ctx = make_context(model, x_labeled=x_l, y_labeled=ds.y_train[perm[:n_l]], x_pool=x_pool, num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CRCTieWarning)
        q = crc(jax.random.key(5), ctx, 20, group_size=5, max_groups=n_groups)
    assert not q.info["tie_break"] and q.info["top_ties"] == 1 and q.info["rank"] is not None
    assert min(q.info["group_scores"]) > 0


@pytest.mark.parametrize("arch,n_l", [("mlp", 40), ("cnn", 40), ("mlp", 200)])
def test_proposition_2_on_trained_features(trained, arch, n_l):
    """|L|+G ≤ rank of the features: a group holding a duplicate of one of its members,
    or an already-labeled point, scores 0 and the others are positive."""
    ds, nets = trained
    model = nets[arch]
    perm = np.asarray(jax.random.permutation(jax.random.key(7), ds.x_train.shape[0]))
    x_l = ds.x_train[perm[:n_l]]
    fresh = ds.x_train[perm[n_l : n_l + 20]]
    x_pool = np.concatenate([fresh, fresh[:1], x_l[:1]])  # rows 20: duplicate of row 0; 21: labeled
    groups = np.array([[0, 1, 2, 3, 20], [4, 5, 6, 7, 21], [8, 9, 10, 11, 12], [13, 14, 15, 16, 17], [18, 19, 0, 4, 8]])
    eps = float(np.finfo(np.float32).eps)
    ref, ref_ranks, k, _ = brute_force_scores(*features_l_pool(model, x_l, x_pool, groups), groups, 2, eps, scale=10)
    assert k == n_l + 5 and list(ref_ranks) == [n_l + 4, n_l + 4, n_l + 5, n_l + 5, n_l + 5]  # the proposition applies
    for method in ("dual", "primal"):
        s, info = group_scores(model, x_l, x_pool, groups, num_classes=10, method=method, num_selected=2)
        assert info["rank"] == n_l + 5 and info["rank_min"] == n_l + 4
        assert s[0] == 0.0 and s[1] == 0.0 and np.all(s[2:] > 0) and info["zero_groups"] == 2
        np.testing.assert_allclose(s, ref, rtol=1e-4, atol=0)


def test_nnx_mlp_with_40_labels_scores_groups_apart():
    """An NNX MLP with 64 features at |L| = 40: positive, distinct scores equal to the
    brute force (a single rank over L ∪ the whole pool used to zero every group)."""
    from flax import nnx

    model = jaxal.from_nnx(NnxTinyMLP(64, 64, 10, nnx.Rngs(3)))
    ds = data.load("digits", seed=0)
    x_l, x_pool = ds.x_train[:40], ds.x_train[40:80]
    groups = np.arange(40).reshape(8, 5)
    s, info = group_scores(model, x_l, x_pool, groups, num_classes=10, num_selected=2)
    ref, _, k, _ = brute_force_scores(*features_l_pool(model, x_l, x_pool, groups), groups, 2,
                                      float(np.finfo(np.float32).eps), scale=10)
    assert info["rank"] == k == 45 and np.all(s > 0) and np.unique(s).size == 8
    np.testing.assert_allclose(s, ref, rtol=1e-6)


def test_all_tied_scores_warn_and_are_recorded():
    """Collapsed features (the body outputs zeros): every group's Gram is C·11ᵀ, all
    scores are equal, so the pick is a random tie-break — recorded and warned about."""
    rng = np.random.default_rng(12)
    dense = feature_model(8)
    model = from_functions(lambda p, x: 0.0 * x, dense.head, dense.params, dense_head=True)
    x_l = rng.standard_normal((6, 8)).astype(np.float32)
    ctx = make_context(model, x_labeled=x_l, y_labeled=np.zeros(6, int), x_pool=rng.standard_normal((12, 8)))
    with pytest.warns(CRCTieWarning, match="all 6 groups score 24"):
        q = crc(jax.random.key(0), ctx, 4, group_size=2)
    assert q.info["tie_break"] and q.info["top_ties"] == 6 and q.info["zero_groups"] == 0
    assert q.info["rank"] == 1 and q.info["num_groups"] == 6 and q.info["num_selected"] == 2
    # the same features with a distinct candidate set: no tie, no warning
    ctx = make_context(dense, x_labeled=x_l, y_labeled=np.zeros(6, int), x_pool=rng.standard_normal((12, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CRCTieWarning)
        q = crc(jax.random.key(0), ctx, 4, group_size=2)
    assert not q.info["tie_break"] and q.info["top_ties"] == 1


def test_non_dense_head_uses_per_group_ranks_too():
    """The NTK-engine path (head not marked dense) ranks each group on its own spectrum
    and agrees with the dual path of the same linear head."""
    rng = np.random.default_rng(13)
    d = 6
    dense = feature_model(d)
    plain = from_functions(dense.features, dense.head, dense.params, dense_head=False)
    x_l = rng.standard_normal((3, d)).astype(np.float32)
    a, b, c, e = rng.standard_normal((4, d)).astype(np.float32)
    x_pool = np.stack([a, a, b, c, e, x_l[2]])
    groups = np.array([[0, 1], [2, 3], [4, 5], [1, 4]])
    s_ntk, info_ntk = group_scores(plain, x_l, x_pool, groups, num_classes=C)
    s_dual, info_dual = group_scores(dense, x_l, x_pool, groups, num_classes=C, method="dual")
    assert info_ntk["method"] == "primal" and info_ntk["rank"] == info_dual["rank"] == 5
    assert s_ntk[0] == s_ntk[2] == 0.0 and s_ntk[1] > 0 and s_ntk[3] > 0
    np.testing.assert_allclose(s_ntk, s_dual, rtol=1e-4)


def test_default_group_size_rule():
    for q in range(1, 61):
        g = default_group_size(q)
        proper = [d for d in range(1, q // 2 + 1) if q % d == 0]  # divisors leaving >= 2 groups
        assert q % g == 0
        assert g == (max(proper) if proper and max(proper) > 1 else q)
    assert [default_group_size(q) for q in (1, 2, 7, 9, 15, 20, 100)] == [1, 2, 7, 3, 5, 10, 50]
    model = feature_model(4)
    rng = np.random.default_rng(14)
    ctx = make_context(model, x_labeled=rng.standard_normal((3, 4)), y_labeled=np.zeros(3, int),
                       x_pool=rng.standard_normal((60, 4)).astype(np.float32))
    q = crc(jax.random.key(1), ctx, 20)
    assert q.info["group_size"] == 10 and q.info["num_selected"] == 2 and q.info["num_groups"] == 6
