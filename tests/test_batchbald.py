"""BatchBALD and EPIG (jaxal.ops.batchbald, jaxal.strategies.batchbald) against brute
force: enumerated joint mutual information, a brute-force greedy, a double loop for
EPIG, and the textbook properties (one point: BALD; a copy adds less than BALD, nothing
when every sample is sure of its class)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from models_for_tests import TinyMLP

import jaxal
from jaxal.ops.batchbald import batchbald, epig_scores, joint_mutual_information
from jaxal.strategies.bald import bald_from_probs
from jaxal.strategies.base import make_context
from jaxal.strategies.batchbald import epig, sampled_probs


def _probs(seed: int, k: int, n: int, c: int, alpha: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(c, alpha), size=(k, n))


# ---------------------------------------------------------------- BatchBALD
def test_greedy_is_the_brute_force_greedy_with_exact_joint_mi():
    p = _probs(0, 6, 8, 3)
    with jax.enable_x64(True):
        idx, info = batchbald(p, 4, jax.random.key(0))
    picked = []
    for _ in range(4):  # brute force: each candidate's enumerated joint MI with the picks
        mi = [joint_mutual_information(p[:, picked + [x]]) if x not in picked else -np.inf for x in range(8)]
        picked.append(int(np.argmax(mi)))
        assert np.sort(mi)[-1] - np.sort(mi)[-2] > 1e-6  # no near-tie: the argmax is well defined
    assert idx.tolist() == picked
    brute = [joint_mutual_information(p[:, picked[: i + 1]]) for i in range(4)]
    np.testing.assert_allclose(info["joint_mi"], brute, rtol=0, atol=1e-6)
    assert info["exact"] == [True] * 4 and all(isinstance(v, float) for v in info["joint_mi"])


def test_joint_mi_textbook_properties():
    p = _probs(1, 7, 3, 4)
    with jax.enable_x64(True):
        bald = np.asarray(bald_from_probs(p))
    single = [joint_mutual_information(p[:, [i]]) for i in range(3)]
    np.testing.assert_allclose(single, bald, rtol=0, atol=1e-12)
    # labels are independent given θ: a copy of x adds I(y'; θ | y) = H(y'|y) − E_θ H(y'|θ), less than BALD(x);
    # nothing when each θ_k predicts one class (the copy's label is then the first one's)
    copies = joint_mutual_information(p[:, [0, 0]])
    assert single[0] + 1e-3 < copies < 2 * single[0] - 1e-3
    one_hot = np.eye(4)[np.random.default_rng(7).integers(0, 4, (7, 1))]  # [K, 1, C]
    np.testing.assert_allclose(joint_mutual_information(one_hot[:, [0, 0]]), joint_mutual_information(one_hot),
                               rtol=0, atol=1e-12)
    pair = joint_mutual_information(p[:, [0, 1]])
    assert max(single[:2]) - 1e-12 <= pair <= sum(single[:2]) + 1e-12  # monotone, subadditive
    with pytest.raises(ValueError, match="brute-force limit"):
        joint_mutual_information(np.full((2, 7, 10), 0.1))


def test_batchbald_skips_the_duplicates_top_k_bald_takes():
    base = _probs(2, 6, 5, 3, alpha=0.3)
    bald = [joint_mutual_information(base[:, [i]]) for i in range(5)]  # BALD (test above), no program to compile
    order = np.argsort(bald)[::-1]
    pool = base[:, [order[0]] * 4 + list(order[1:])]  # the best point four times, then the others
    top = np.argsort(-np.asarray(bald)[[order[0]] * 4 + list(order[1:])], kind="stable")[:4]
    with jax.enable_x64(True):  # the shapes and dtype of the first test: its compiled loop
        idx, _ = batchbald(pool, 4, jax.random.key(0))
    assert sorted(top.tolist()) == [0, 1, 2, 3]  # top-k BALD: four copies of one point
    assert idx[0] in (0, 1, 2, 3) and not set(idx[1:].tolist()) & {0, 1, 2, 3}
    assert joint_mutual_information(pool[:, idx]) > joint_mutual_information(pool[:, top]) + 0.1


def test_sampled_configurations_approach_the_exact_joint_mi():
    p = _probs(0, 6, 8, 3)
    errors = {}
    with jax.enable_x64(True):
        for m in (27, 20_000):  # exact_limit=1: every pick after the first is scored on drawn configurations
            errors[m] = []
            for seed in range(4):  # new uniforms, the same compiled loop
                idx, info = batchbald(p, 4, jax.random.key(seed), num_configurations=m, exact_limit=1)
                assert info["exact"] == [True, False, False, False]
                errors[m].append(abs(info["joint_mi"][-1] - joint_mutual_information(p[:, idx])))
    assert np.mean(errors[20_000]) < 0.02 and np.mean(errors[20_000]) < np.mean(errors[27]) / 4, errors


def test_bad_arguments_are_named():
    p = _probs(4, 3, 5, 2)
    for kwargs, match in [({"batch": 6}, "batch"), ({"batch": 2, "num_configurations": 0}, "num_configurations"),
                          ({"batch": 2, "exact_limit": 0}, "exact_limit")]:
        with pytest.raises(ValueError, match=match):
            batchbald(p, key=jax.random.key(0), **kwargs)
    with pytest.raises(ValueError, match="share K and C"):
        epig_scores(p, p[:2])


# ---------------------------------------------------------------- EPIG
def test_epig_against_a_double_loop():
    pool, target = _probs(5, 5, 4, 3), _probs(6, 5, 3, 3)
    expected = np.zeros(4)
    for n in range(4):
        for m in range(3):
            joint = np.mean(pool[:, n, :, None] * target[:, m, None, :], axis=0)
            outer = joint.sum(1)[:, None] * joint.sum(0)[None, :]
            expected[n] += np.sum(joint * np.log(joint / outer)) / 3
    fixed = np.broadcast_to(target[:1], target.shape)  # the same p(y*|x*) under every θ
    with jax.enable_x64(True):
        whole = np.asarray(epig_scores(pool, target))
        chunked = np.asarray(epig_scores(pool, target, chunk_elements=20))  # 2 points a chunk, one padded
        independent = np.asarray(epig_scores(pool, fixed))
    np.testing.assert_allclose(whole, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chunked, expected, rtol=0, atol=1e-6)
    assert np.all(whole >= -1e-12) and np.all(expected > 1e-4)
    np.testing.assert_allclose(independent, 0.0, atol=1e-12)


# ---------------------------------------------------------------- strategies
def _dense(rng, d_in: int, d_out: int) -> dict:
    return {"kernel": rng.normal(size=(d_in, d_out)).astype(np.float32), "bias": rng.normal(size=d_out).astype(np.float32)}


def _forward(params: dict, x: np.ndarray) -> np.ndarray:
    """The TinyMLP's probabilities without dropout, in NumPy: softmax(tanh(x W + b) V + c)."""
    logits = np.tanh(x @ params["body"]["body"]["kernel"] + params["body"]["body"]["bias"]) @ params["head"]["kernel"]
    e = np.exp(logits + params["head"]["bias"])
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    net = TinyMLP(8, dropout_rate=0.5)  # params drawn here: no init program to compile
    variables = {"params": {"body": _dense(rng, 4, 8), "head": _dense(rng, 8, 3)}}
    model = jaxal.from_linen(net, variables, head="head", inference_kwargs={"train": False},
                             stochastic_kwargs={"train": True})
    deterministic = jaxal.from_linen(net, variables, head="head", inference_kwargs={"train": False})
    return model, rng.normal(size=(30, 4)).astype(np.float32), deterministic


def test_sampled_probs_share_one_dropout_mask_per_sample(setup):
    model, x, _ = setup
    rows = x[[0, 1, 2, 0]]
    p = np.asarray(sampled_probs(model, rows, jax.random.key(3), num_samples=4, batch_size=2))
    assert p.shape == (4, 4, 3)
    np.testing.assert_allclose(p[:, 3], p[:, 0], rtol=1e-6)  # one network per sample, across chunks too
    assert np.ptp(p[:, 0, 0]) > 1e-3  # and the samples differ: dropout is on
    ens = [model.params, jax.tree_util.tree_map(lambda v: np.asarray(v) * 0.5, model.params)]
    pe = np.asarray(sampled_probs(model, rows, params_ensemble=ens, batch_size=2))
    np.testing.assert_allclose(pe, np.stack([_forward(member, rows) for member in ens]), rtol=1e-5, atol=1e-7)


def _select(name, model, x, **options):
    return jaxal.select(name, jax.random.key(0), model, x_labeled=x[:0], y_labeled=np.zeros(0, np.int32),
                        x_pool=x, budget=5, return_query=True, batch_size=2, **options)  # chunks of 2: compiled above


def test_strategies_run_end_to_end(setup):
    model, x, _ = setup
    q = _select("batchbald", model, x, num_samples=4, num_configurations=30)
    assert len(set(q.indices.tolist())) == 5 and q.info["exact"] == [True] * 4 + [False]  # 3^4 > 30: drawn
    assert np.all(np.diff(q.info["joint_mi"][:4]) > 0)  # exact: the joint MI only grows
    e = _select("epig", model, x, num_samples=4, num_targets=8, candidates=12)
    assert len(set(e.indices.tolist())) == 5 and e.info["scored"] == 12 and e.info["num_targets"] == 8


def test_strategies_refuse_what_they_cannot_do(setup):
    model, x, _ = setup
    det = setup[2]
    for name in ("batchbald", "epig"):
        with pytest.raises(ValueError, match="stochastic model"):
            _select(name, det, x)
    for name, options, match in [("batchbald", {"num_configurations": 0}, "num_configurations"),
                                 ("batchbald", {"num_samples": 1}, "num_samples"),
                                 ("epig", {"num_targets": 0}, "num_targets"),
                                 ("epig", {"candidates": 3}, "candidates"),
                                 ("epig", {"num_configurations": 10}, "takes no option")]:
        with pytest.raises(ValueError, match=match):
            _select(name, model, x, **options)
    ctx = make_context(model, x_labeled=x[:0], y_labeled=np.zeros(0, np.int32), x_pool=x)
    with pytest.raises(ValueError, match="mesh=None"):
        epig(jax.random.key(0), ctx._replace(mesh=object()), 5)
