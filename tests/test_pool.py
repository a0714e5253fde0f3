"""The sharded pool (jaxal.pool) and the strategies on a mesh.

Single-device checks run here; the many-device check (8 forced host devices, which must
be set before JAX starts) runs a script in a subprocess. Every comparison is against an
independent computation: NumPy on the whole array, or the single-device strategy path.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_for_tests import tiny_mlp

from jaxal import pool
from jaxal.strategies import select


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    model = tiny_mlp(16, d_in=6, num_classes=4, seed=3)
    x = rng.normal(size=(700, 6)).astype(np.float32)
    xl = rng.normal(size=(20, 6)).astype(np.float32)
    yl = rng.integers(0, 4, 20)
    return model, x, xl, yl


def _tanh2(x):
    return jnp.tanh(x) * 2.0


def _pair(x):
    return jnp.sum(x, axis=1), x[:, :2]


def test_map_rows_pads_never_drops_and_streams_a_memory_map(tmp_path):
    x = np.random.default_rng(1).normal(size=(1003, 5)).astype(np.float32)
    mesh = pool.pool_mesh(jax.devices()[:1])
    out = pool.map_rows(_tanh2, x, mesh, chunk_rows=64)
    assert out.n == 1003 and out.data.shape[0] >= 1003
    np.testing.assert_allclose(np.asarray(out.data)[:1003], np.tanh(x) * 2, rtol=1e-6)
    np.save(tmp_path / "pool.npy", x)
    mm = np.load(tmp_path / "pool.npy", mmap_mode="r")
    streamed = pool.map_rows(_pair, mm, mesh, chunk_rows=100)
    s, two = streamed.data
    np.testing.assert_allclose(np.asarray(s)[:1003], x.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(two)[:1003], x[:, :2])
    assert not np.asarray(pool.valid_rows(streamed))[1003:].any()


def test_rows_reads_a_data_source_of_dicts():
    data = np.arange(40, dtype=np.float32).reshape(10, 4)

    class Source:  # what tfds.data_source gives: len and rows as dicts
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"image": data[i], "label": i % 3}

    rows = pool.Rows(Source(), field="image", transform=lambda im: im / 2)
    assert rows.shape == (10, 4) and len(rows) == 10
    np.testing.assert_array_equal(rows[3:6], data[3:6] / 2)
    with pytest.raises(ValueError, match="dicts with keys"):
        pool.Rows(Source())[:2]
    out = pool.shard_rows(rows, pool.pool_mesh(jax.devices()[:1]), chunk_rows=3)
    np.testing.assert_array_equal(np.asarray(out.data)[:10], data / 2)


def test_memory_bound_says_the_size_asked():
    x = np.zeros((1000, 64), np.float32)
    with pytest.raises(ValueError, match=r"needs 0\.00 GiB \(262,144 bytes\) but memory_bytes"):
        pool.shard_rows(x, pool.pool_mesh(jax.devices()[:1]), memory_bytes=100_000)


def test_top_k_matches_numpy_and_draws_ties_uniformly():
    rng = np.random.default_rng(2)
    s = rng.normal(size=300).astype(np.float32)
    got = np.asarray(pool.top_k(jnp.asarray(s), 17, jax.random.key(0)))
    np.testing.assert_array_equal(got, np.argsort(-s)[:17])
    # padding rows (beyond n) and NaN are never chosen, even when they would rank first
    s2 = s.copy()
    s2[5] = np.nan
    padded = jnp.asarray(np.concatenate([s2, np.full(20, 1e9, np.float32)]))
    got = np.asarray(pool.top_k(padded, 299, jax.random.key(0), n=300))
    assert set(got) == set(range(300)) - {5}
    # ties at the cut: 3 sure picks, then 2 of 10 tied values, each tied index equally likely
    t = np.zeros(50, np.float32)
    t[:3] = [5, 4, 3]
    t[10:20] = 1.0
    counts = np.zeros(50)
    for seed in range(400):
        got = np.asarray(pool.top_k(jnp.asarray(t), 5, jax.random.key(seed)))
        np.testing.assert_array_equal(got[:3], [0, 1, 2])
        assert set(got[3:]) <= set(range(10, 20)) and len(set(got)) == 5
        counts[got[3:]] += 1
    # 800 draws over 10 tied indices: 80 expected each; a binomial sd of ~8.5
    assert counts[10:20].min() > 50 and counts[10:20].max() < 110


@pytest.mark.parametrize("name", ["entropy", "egl", "coreset", "badge"])
def test_a_one_device_mesh_picks_what_the_single_device_path_picks(setup, name):
    model, x, xl, yl = setup
    mesh = pool.pool_mesh(jax.devices()[:1])
    for seed in range(1):
        plain = select(name, jax.random.key(seed), model, x_labeled=xl, y_labeled=yl, x_pool=x, budget=25,
                       batch_size=128)
        meshed = select(name, jax.random.key(seed), model, x_labeled=xl, y_labeled=yl, x_pool=x, budget=25,
                        mesh=mesh, batch_size=128)
        np.testing.assert_array_equal(plain, meshed)


def test_strategy_on_mesh_refuses_features_over_the_bound(setup):
    model, x, xl, yl = setup
    with pytest.raises(ValueError, match="the pool's features needs"):
        select("coreset", jax.random.key(0), model, x_labeled=xl, y_labeled=yl, x_pool=x, budget=5,
               mesh=pool.pool_mesh(jax.devices()[:1]), memory_bytes=1000)


def test_bald_on_mesh_with_an_ensemble_matches_the_single_device_path(setup):
    model, x, xl, yl = setup
    members = [tiny_mlp(16, d_in=6, num_classes=4, seed=s).params for s in (3, 4, 5)]
    mesh = pool.pool_mesh(jax.devices()[:1])
    plain = select("bald", jax.random.key(0), model, x_labeled=xl, y_labeled=yl, x_pool=x, budget=20,
                   params_ensemble=members)
    meshed = select("bald", jax.random.key(0), model, x_labeled=xl, y_labeled=yl, x_pool=x, budget=20,
                    params_ensemble=members, mesh=mesh)
    np.testing.assert_array_equal(plain, meshed)


def test_ties_are_broken_as_on_one_device(setup):
    """A model whose scores all tie (a zero head): the mesh path draws the same ties as
    the single-device path from the same key."""
    model, x, xl, yl = setup
    flat = model.replace_params({**model.params, "head": jax.tree.map(jnp.zeros_like, model.params["head"])})
    mesh = pool.pool_mesh(jax.devices()[:1])
    for seed in range(3):
        plain, meshed = (select("entropy", jax.random.key(seed), flat, x_labeled=xl, y_labeled=yl, x_pool=x,
                                budget=25, mesh=m) for m in (None, mesh))
        np.testing.assert_array_equal(plain, meshed)


_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {tests!r})
    from models_for_tests import TinyMLP, tiny_mlp
    import jaxal
    from jaxal import pool
    from jaxal.strategies import select

    assert len(jax.devices()) == 8
    rng = np.random.default_rng(0)
    model = tiny_mlp(16, d_in=6, num_classes=4, seed=3)
    net = TinyMLP(16, num_classes=4, dropout_rate=0.3)
    dropout = jaxal.from_linen(net, net.init(jax.random.key(1), jnp.zeros((1, 6))), stochastic_kwargs={{"train": True}})
    x = rng.normal(size=(1001, 6)).astype(np.float32)   # 1001: every mesh pads
    xl = rng.normal(size=(20, 6)).astype(np.float32)
    yl = rng.integers(0, 4, 20)
    one, eight = pool.pool_mesh(jax.devices()[:1]), pool.pool_mesh()
    # one key per case: a second key would run the same compiled programs
    cases = [(n, model, {{}}) for n in ("entropy", "margin", "egl", "coreset", "badge", "typiclust")]
    cases += [("badge", model, {{"first": "uniform", "bias": False}}), ("bald", dropout, {{"num_samples": 4}}),
              ("badge", model, {{"fast": False}})]
    for name, m, opts in cases:
        seed = 0
        a, b = (select(name, jax.random.key(seed), m, x_labeled=xl, y_labeled=yl, x_pool=x, budget=40,
                       mesh=mesh, **opts) for mesh in (one, eight))
        print("CASE", name, seed, int(np.array_equal(a, b)), int(b.max() < 1001))
    # the cached features really are spread over the 8 devices
    f = pool.map_rows(jaxal.model.features_rows, x, eight, model)
    print("DEVICES", len(f.data.sharding.device_set))
    """
)


def test_eight_devices_pick_what_one_device_picks():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = _SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    cases = [line.split() for line in out.stdout.splitlines() if line.startswith("CASE")]
    assert len(cases) == 9
    bad = [c[1:3] for c in cases if c[3] != "1" or c[4] != "1"]
    assert not bad, f"8 devices picked other indices than 1 device for {bad}"
    assert "DEVICES 8" in out.stdout
