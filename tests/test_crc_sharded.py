"""CRC on a device mesh (``ctx.mesh``) picks what the single-device path picks.

The pool's features are computed sharded by rows (:func:`jaxal.pool.map_rows`), each
group's rows gathered from the mesh and scored on the host in float64 as on one device.
Several devices are forced host (CPU) devices, which need ``XLA_FLAGS`` before JAX is
imported, so those checks run in subprocesses (as ``tests/test_ntk.py`` does), one of
them as two ``jax.distributed`` processes (the multi-host path: groups split between
processes, scores shared).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import linear_head

import jaxal
from jaxal.model import from_functions
from jaxal.pool import pool_mesh
from jaxal.strategies.base import make_context
from jaxal.strategies.crc import crc, group_scores, random_groups

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Cases shared by the subprocess scripts: (name, model, x_labeled, x_pool, budget, options).
_CASES = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import jaxal
    from jaxal.strategies.base import make_context
    from jaxal.strategies.crc import crc

    C = 3

    def tanh_features(p, x):
        return jnp.tanh(x @ p["w"])

    def head(p, h):
        return h @ p["kernel"] + p["bias"]

    def identity(p, x):
        return x

    def model_of(features, d_in, d, seed):
        rng = np.random.default_rng(seed)
        body = {"w": jnp.asarray(rng.standard_normal((d_in, d)), jnp.float32)} if features is tanh_features else {}
        params = {"body": body, "head": {"kernel": jnp.asarray(rng.standard_normal((d, C)), jnp.float32),
                                         "bias": jnp.zeros(C, jnp.float32)}}
        return jaxal.from_functions(features, head, params, dense_head=True)

    rng = np.random.default_rng(0)
    x5 = rng.standard_normal((203, 5)).astype(np.float32)  # 203 rows: padded on 8 devices
    x8 = rng.standard_normal((150, 8)).astype(np.float32)
    x8[100:] = x8[:50]  # duplicates: groups that lose rank score 0 (Proposition 2)
    low = rng.standard_normal((120, 3)).astype(np.float32) @ rng.standard_normal((3, 8)).astype(np.float32)
    labels = np.arange(203) % C
    tanh_m, ident = model_of(tanh_features, 5, 6, 1), model_of(identity, 8, 8, 2)
    CASES = [
        # primal side (|L|+G <= d+1)
        ("tanh_primal", tanh_m, x5[:3], x5, 8, {"group_size": 4}),
        ("tanh_no_labels", tanh_m, x5[:0], x5, 6, {"group_size": 2}),
        ("tanh_positive", tanh_m, x5[:2], x5, 8, {"group_size": 4, "spectrum": "positive"}),
        ("tanh_pseudo_al", tanh_m, x5[:3], x5, 6, {"pool_labels": labels, "per_class": 1}),
        # dual side (|L|+G > d+1), several gathering rounds (a small memory bound)
        ("ident_dual", ident, x8[:20], x8, 8, {"group_size": 4}),
        ("ident_dual_rounds", ident, x8[:20], x8, 8, {"group_size": 4, "memory_bytes": 4000}),
        ("ident_duplicates", ident, x8[:4], x8, 4, {"group_size": 2, "max_groups": 60}),
        ("ident_low_rank", ident, low[:5], low, 10, {"group_size": 5}),
    ]

    def query(case, seed, mesh):
        name, model, x_l, x_pool, budget, opts = case
        ctx = make_context(model, x_labeled=x_l, y_labeled=np.zeros(len(x_l), int), x_pool=x_pool, mesh=mesh)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return crc(jax.random.PRNGKey(seed), ctx, budget, **opts)

    INFO_KEYS = ("method", "rank", "rank_min", "rank_max", "zero_groups", "labeled_rank", "num_groups", "tie_break")

    def compare(ref, got):
        # identical indices and integer diagnostics; scores to float tolerance
        a, b = np.asarray(ref.info["group_scores"]), np.asarray(got.info["group_scores"])
        rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))) if a.size else 0.0
        return {"same": ref.indices.tolist() == got.indices.tolist(),
                "info": [k for k in INFO_KEYS if ref.info[k] != got.info[k]],
                "rel": rel}
    """
)

_EIGHT = _CASES + textwrap.dedent(
    """
    from jaxal.pool import pool_mesh
    assert len(jax.devices()) == 8
    meshes = {"1": pool_mesh(jax.devices()[:1]), "8": pool_mesh()}
    out = {}
    for case in CASES:
        for seed in range(2):
            ref = query(case, seed, None)
            for m, mesh in meshes.items():
                out[f"{case[0]}/{seed}/{m}"] = compare(ref, query(case, seed, mesh))
    print("RESULT", json.dumps(out))
    """
)

_TWO_PROCESSES = _CASES + textwrap.dedent(
    """
    from jaxal.pool import pool_mesh
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    out = {}
    for case in (CASES[0], CASES[5]):  # primal side; dual side in several gathering rounds
        for seed in range(2):
            out[f"{case[0]}/{seed}"] = compare(query(case, seed, None), query(case, seed, pool_mesh()))
    print("RESULT", json.dumps(out))
    """
)


def _run(script: str, env: dict, prelude: str = "") -> subprocess.Popen:
    code = "import json, sys\n" + prelude + script
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _check(results: dict) -> None:
    assert results
    bad = {k: v for k, v in results.items() if not v["same"] or v["info"] or v["rel"] > 1e-4}
    assert not bad, bad


def test_mesh_of_1_and_8_devices_pick_what_one_device_picks():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    _check(_result(_run(_EIGHT, env)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_pick_what_one_device_picks():
    """Two ``jax.distributed`` processes of 2 devices each: every process scores every
    other group, the scores are all-gathered, and both return the one-device pick."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = _free_port()
    procs = [
        _run(_TWO_PROCESSES, env, textwrap.dedent(
            f"""
            import jax
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2, process_id={i},
                                       initialization_timeout=120)
            """))
        for i in range(2)
    ]
    try:
        results = [_result(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert results[0] == results[1]
    _check(results[0])


# --- one device (this process): options, refusals, memory bound, inputs read by rows ---

C = 3


def _identity(p, x):
    return x


def _model(d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    head = {"kernel": jnp.asarray(rng.standard_normal((d, C)), jnp.float32), "bias": jnp.zeros(C, jnp.float32)}
    return from_functions(_identity, linear_head, {"body": {}, "head": head}, dense_head=True)


def _ctx(model, x_l, x_pool, mesh, memory_bytes=None):
    return make_context(model, x_labeled=x_l, y_labeled=np.zeros(len(x_l), int), x_pool=x_pool, mesh=mesh,
                        memory_bytes=memory_bytes)


@pytest.fixture(scope="module")
def one():
    return pool_mesh(jax.devices()[:1])


def test_refuses_the_full_ntk_and_non_dense_heads_on_a_mesh(one):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    ctx = _ctx(_model(4), x[:2], x, one)
    with pytest.raises(ValueError, match="subset='all'.*single-device path.*mesh=None"):
        crc(jax.random.PRNGKey(0), ctx, 4, subset="all")
    m = _model(4)
    not_dense = from_functions(_identity, linear_head, m.params, dense_head=False)
    with pytest.raises(ValueError, match="not Dense.*single-device path"):
        crc(jax.random.PRNGKey(0), _ctx(not_dense, x[:2], x, one), 4)


def test_features_cache_must_fit_memory_bytes(one):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="CRC's pool features h\\(x\\) needs .* memory_bytes"):
        jaxal.select("crc", jax.random.PRNGKey(0), _model(16), x_labeled=x[:2], y_labeled=np.zeros(2, int),
                     x_pool=x, budget=4, mesh=one, memory_bytes=1000)


def test_non_finite_features_raise(one):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    x[7, 1] = np.nan  # not checked up front on a mesh (the pool may not fit in memory)
    with pytest.raises(ValueError, match="non-finite"):
        crc(jax.random.PRNGKey(0), _ctx(_model(4), x[:2] * 0, x, one), 40, group_size=20)


def test_memory_mapped_pool_and_select_by_name(one, tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((90, 6)).astype(np.float32)
    np.save(tmp_path / "pool.npy", x)
    mm = np.load(tmp_path / "pool.npy", mmap_mode="r")
    kw = {"x_labeled": x[:5], "y_labeled": np.zeros(5, int), "budget": 6, "group_size": 3, "return_query": True}
    ref = jaxal.select("crc", jax.random.PRNGKey(5), _model(6), x_pool=x, **kw)
    got = jaxal.select("crc", jax.random.PRNGKey(5), _model(6), x_pool=mm, mesh=one, batch_size=16, **kw)
    assert got.indices.tolist() == ref.indices.tolist()
    np.testing.assert_allclose(got.info["group_scores"], ref.info["group_scores"], rtol=1e-10)


def test_group_scores_on_a_mesh_in_float64(one):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 5))
    groups = random_groups(jax.random.PRNGKey(0), 60, 4)
    with jax.enable_x64(True):
        m = _model(5)
        ref, ref_info = group_scores(m, x[:3], x, groups, num_classes=C, dtype=jnp.float64)
        got, got_info = group_scores(m, x[:3], x, groups, num_classes=C, dtype=jnp.float64, mesh=one)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert got_info == ref_info
