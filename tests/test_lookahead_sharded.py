"""The look-ahead strategies on a mesh: every pool row a candidate (jaxal.lookahead.pool_scores).

- On a one-device mesh the score of a candidate in ``S`` equals the single-device path's
  (``core.scores`` of the state built on ``S``): exactly in float64, to round-off in float32.
- Eight forced host devices pick the same indices as one (a subprocess: ``XLA_FLAGS`` must
  be set before JAX starts, as in ``tests/test_ntk.py``).
- A ``memory_bytes`` too small for one candidate per chunk is a clear error; options the
  pool path cannot serve are refused by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from models_for_tests import tiny_mlp

import jaxal
from jaxal import pool
from jaxal.lookahead import core
from jaxal.lookahead.from_model import init_from_model
from jaxal.lookahead.pool_scores import pool_scores
from jaxal.strategies.model_change import _eval_rows

N_POOL, N_L, N_S = 300, 20, 60


def _data(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    xl = rng.normal(size=(N_L, 4)).astype(dtype)
    yl = rng.integers(0, 3, N_L).astype(np.int32)
    xp = rng.normal(size=(N_POOL, 4)).astype(dtype)
    return xl, yl, xp


def _existing(model, xl, yl, xp, rows, objective, reference):
    """The single-device path's scores of the candidates S = xp[rows]."""
    state, _ = init_from_model(model, xl, yl, xp[rows])
    if reference == "linearised":
        state = state._replace(offset=np.zeros_like(state.offset))
    s, clamped = core.scores(state, objective)
    assert not np.any(np.asarray(clamped))  # the ranking rule is then the identity on S
    return np.asarray(s)


def test_scores_on_s_equal_the_single_device_path_float64():
    """Closed form (MLMOC) and explicit change (EER): the same maths as core.init + core.scores."""
    with jax.enable_x64(True):
        model = tiny_mlp(16)
        xl, yl, xp = _data(np.float64)
        rows = _eval_rows(jax.random.key(3), N_POOL, 0, N_S)
        state, _ = init_from_model(model, xl, yl, xp[rows])
        for objective in ("mlmoc", "eer"):
            r = pool_scores(model, xl, yl, xp, pool.pool_mesh(jax.devices()[:1]), rows, objective=objective,
                            chunk_rows=64)
            s = np.asarray(r.scores.data)
            assert s.dtype == np.float64 and r.chunk_rows == 64 and int(r.info.num_clamped) == 0
            # 4e-13 apart at XLA's default CPU optimisation; the suite compiles at level 0
            # (tests/conftest.py), where 2 of the 60 rows differ by up to 6e-7 (measured): a
            # maths difference would be O(1), float32 round-off 1e-4
            np.testing.assert_allclose(s[rows], np.asarray(core.scores(state, objective)[0]), rtol=2e-6)
            assert np.all(np.isinf(s[N_POOL:])) and np.all(np.isfinite(s[:N_POOL]))  # padding, real rows


def test_select_on_a_one_device_mesh_matches_the_single_device_path_float32():
    """Through ``select(mesh=...)``: EMOC scores (``reference="linearised"``) on S to float32
    round-off, the picks are the pool's top scores, and ``info`` says which path ran."""
    model = tiny_mlp(16)
    xl, yl, xp = _data()
    mesh = pool.pool_mesh(jax.devices()[:1])
    key = jax.random.key(5)
    q = jaxal.select("emoc", key, model, x_labeled=xl, y_labeled=yl, x_pool=xp, budget=5, mesh=mesh,
                     eval_size=N_S, chunk_size=64, reference="linearised", return_query=True)
    assert q.info["path"] == "pool" and q.info["candidates"] == N_POOL and q.info["eval_size"] == N_S
    assert q.info["num_clamped"] == 0 and q.info["jitter_ok"]
    rows = _eval_rows(jax.random.split(key, 2)[0], N_POOL, 0, N_S)  # the strategy's S (same key split)
    s = np.asarray(pool_scores(model, xl, yl, xp, mesh, rows, objective="emoc", reference="linearised",
                               chunk_rows=64).scores.data)
    np.testing.assert_allclose(s[rows], _existing(model, xl, yl, xp, rows, "emoc", "linearised"), rtol=3e-3)
    assert set(q.indices.tolist()) == set(np.argsort(-s[:N_POOL])[:5].tolist())
    assert not set(q.indices.tolist()) <= set(rows.tolist())  # candidates outside S win too


def test_memory_bytes_too_small_is_a_clear_error():
    model = tiny_mlp(16)
    xl, yl, xp = _data()
    with pytest.raises(ValueError, match=r"look-ahead over the pool on each device.*needs .* GiB .* but memory_bytes"):
        jaxal.select("mlmoc", jax.random.key(0), model, x_labeled=xl, y_labeled=yl, x_pool=xp, budget=3,
                     mesh=pool.pool_mesh(jax.devices()[:1]), memory_bytes=20_000, eval_size=N_S)


@pytest.mark.parametrize("options,word", [(dict(batch="greedy"), "batch='topk'"),
                                          (dict(contraction="full"), "contraction='full'"),
                                          (dict(approximation="infinite"), "approximation='empirical'")])
def test_options_the_pool_path_cannot_serve_are_refused(options, word):
    model = tiny_mlp(16)
    xl, yl, xp = _data()
    with pytest.raises(ValueError, match=word):
        jaxal.select("mlmoc", jax.random.key(0), model, x_labeled=xl, y_labeled=yl, x_pool=xp, budget=3,
                     mesh=pool.pool_mesh(jax.devices()[:1]), **options)


_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path.insert(0, TESTS_DIR)
    from models_for_tests import tiny_mlp
    import jaxal
    from jaxal import pool

    assert len(jax.devices()) == 8
    model = tiny_mlp(16)
    rng = np.random.default_rng(0)
    xl = rng.normal(size=(20, 4)).astype(np.float32)
    yl = rng.integers(0, 3, 20).astype(np.int32)
    xp = rng.normal(size=(1000, 4)).astype(np.float32)  # 1024 rows padded: 128 a device, chunks of 64
    meshes = {1: pool.pool_mesh(jax.devices()[:1]), 8: pool.pool_mesh(jax.devices())}
    for objective, seeds in (("mlmoc", (0, 1, 2)),):
        for seed in seeds:
            got = {d: jaxal.select(objective, jax.random.key(seed), model, x_labeled=xl, y_labeled=yl, x_pool=xp,
                                   budget=10, mesh=m, eval_size=100, chunk_size=64, return_query=True)
                   for d, m in meshes.items()}
            assert got[8].info["devices"] == 8 and got[8].info["chunk_rows"] == 64
            print(objective, seed, "SAME" if got[1].indices.tolist() == got[8].indices.tolist() else
                  f"DIFFERENT {got[1].indices.tolist()} {got[8].indices.tolist()}")
    from jaxal.lookahead.pool_scores import pool_scores
    s = {d: np.asarray(pool_scores(model, xl, yl, xp, m, np.arange(0, 1000, 10), chunk_rows=64).scores.data)[:1000]
         for d, m in meshes.items()}
    print("MAXDIFF", float(np.max(np.abs(s[1] - s[8]) / np.abs(s[1]))))
    """
)


def test_eight_devices_pick_the_same_indices_as_one():
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = _SCRIPT.replace("TESTS_DIR", repr(tests_dir))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    *picks, diff = out.stdout.strip().splitlines()
    assert len(picks) == 3 and all(line.endswith("SAME") for line in picks), out.stdout
    assert float(diff.split()[1]) < 1e-5  # the scores themselves: the same to round-off (measured: 0)
