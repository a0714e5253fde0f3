"""Data-parallel training (``train(..., mesh=...)``) equals one-device training.

The devices are forced host (CPU) devices, which need ``XLA_FLAGS`` before JAX is
imported: the checks run in a subprocess (as ``tests/test_ntk.py`` does for the
sharded kernel) and print their measurements, which the test then asserts on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh
    sys.path.insert(0, TESTS_DIR)
    from models_for_tests import TinyBNNet, TinyMLP
    from jaxal.experiment import compile_clock
    from jaxal.training.train import TrainConfig, init_variables, train

    assert len(jax.devices()) == 8
    SEEN = []  # (rows, devices) of every train-mode batch as the compiled step sees it

    def probe(x):
        jax.debug.inspect_array_sharding(x, callback=lambda s: SEEN.append((x.shape[0], len(s.device_set))))

    class MLP(TinyMLP):
        def __call__(self, x, train=False):
            if train:
                probe(x)
            return super().__call__(x, train)

    class BN(TinyBNNet):
        def __call__(self, x, train=False):
            if train:
                probe(x)
            return super().__call__(x, train)

    def rel(a, b):  # max |a - b| relative to the parameter scale, max |a|, over all leaves
        pairs = [(np.asarray(p), np.asarray(q)) for p, q in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables))]
        return max(float(np.abs(p - q).max()) for p, q in pairs) / max(float(np.abs(p).max()) for p, _ in pairs)

    def report(name, value):
        print(name, value)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = rng.integers(0, 3, 100).astype(np.int32)
    mesh8 = Mesh(np.array(jax.devices()), ("pool",))
    mesh1 = Mesh(np.array(jax.devices()[:1]), ("pool",))
    key = jax.random.key(1)
    # 4 batches of 25 rows. SGD (momentum), whose steps scale with the gradient: a gradient
    # averaged over the wrong number of rows would show (Adam would normalise that away)
    cfg = TrainConfig(max_epochs=4, batch_size=32, optimizer="sgd", learning_rate=1e-1, target_accuracy=1.0)

    mlp = MLP(16)
    v0 = init_variables(jax.random.key(0), mlp, x)
    one = train(key, mlp, v0, x, y, 3, cfg)  # (a) no mesh
    del SEEN[:]
    eight = train(key, mlp, v0, x, y, 3, cfg, mesh=mesh8)  # (b) 8 devices: 25 rows in a bucket of 32
    report("SEEN_MLP8", ",".join(f"{r}x{d}" for r, d in SEEN))  # one compile, 32 rows on 8 devices
    leaf = jax.tree.leaves(eight.variables)[0]
    report("PARAM_DEVICES", len(leaf.sharding.device_set))
    report("PARAM_REPLICATED", leaf.sharding.is_fully_replicated)
    report("MLP8", rel(one, eight))
    report("MLP8_LOSS", abs(one.train_loss - eight.train_loss) / one.train_loss)
    report("MLP8_ACC", abs(one.train_accuracy - eight.train_accuracy))
    report("MLP1", rel(one, train(key, mlp, v0, x, y, 3, cfg, mesh=mesh1)))  # (c) a 1-device mesh
    before = compile_clock.compilations()
    train(jax.random.key(2), mlp, v0, x, y, 3, cfg, mesh=mesh8)
    report("RECOMPILED", compile_clock.compilations() - before)  # a sharded run of the same shapes: none
    # the padding path: exact shapes are 25 rows, padded with weight-0 rows to 32 only for the mesh
    exact = train(key, mlp, v0, x, y, 3, cfg, buckets=False)
    exact8 = train(key, mlp, v0, x, y, 3, cfg, buckets=False, mesh=mesh8)
    report("EXACT8", rel(exact, exact8))

    # BatchNorm in training mode (never padded): batches of 32 divide over 8 devices, and the
    # batch statistics are those of the whole batch (all-reduced), as on one device. (SGD
    # matters here too: the Dense bias before BatchNorm has a zero gradient, whose rounding
    # noise Adam would blow up to full-size steps, differently per reduction order.)
    bn = BN()
    vb = init_variables(jax.random.key(0), bn, x)
    bn_one = train(key, bn, vb, x[:96], y[:96], 3, cfg)  # 3 batches of 32
    del SEEN[:]
    bn_eight = train(key, bn, vb, x[:96], y[:96], 3, cfg, mesh=mesh8)
    report("SEEN_BN8", ",".join(f"{r}x{d}" for r, d in SEEN))
    report("BN8", rel(bn_one, bn_eight))
    # batches of 25 do not divide: each shrinks to 24 rows (no padding)
    del SEEN[:]
    odd = train(key, bn, vb, x, y, 3, cfg, mesh=mesh8)
    report("SEEN_BN_ODD", ",".join(f"{r}x{d}" for r, d in SEEN))
    report("BN_ODD_FINITE", all(bool(np.isfinite(np.asarray(a)).all()) for a in jax.tree.leaves(odd.variables)))
    # batches smaller than the mesh: a clear error
    try:
        train(key, bn, vb, x[:10], y[:10], 3, TrainConfig(max_epochs=1, batch_size=4), mesh=mesh8)
        report("BN_SMALL_ERROR", "none")
    except ValueError as e:
        report("BN_SMALL_ERROR", "3rows-8devices" if "batch of 3 rows" in str(e) and "8 devices" in str(e) else "other")
    """
)


def _run() -> dict[str, str]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = f"TESTS_DIR = {os.path.dirname(os.path.abspath(__file__))!r}\n" + _SCRIPT
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())


def test_sharded_training_equals_single_device():
    r = _run()
    # the 8-device run's batches were row-sharded inside the compiled step (one compile: the
    # outputs stay replicated, so later steps reuse it), and its parameters are replicated
    assert r["SEEN_MLP8"] == "32x8"
    assert int(r["PARAM_DEVICES"]) == 8 and r["PARAM_REPLICATED"] == "True"
    assert int(r["RECOMPILED"]) == 0
    # the same gradients as one device, up to float rounding: measured <= 9e-8 of the parameter
    # scale. A gradient averaged over the wrong rows is far off: counting the padded rows
    # gave 0.25, dividing by the padded batch size (25 -> 32 rows, a pure scale) 0.045
    assert float(r["MLP8"]) < 1e-6
    assert float(r["MLP8_LOSS"]) < 1e-5 and float(r["MLP8_ACC"]) == 0.0
    assert float(r["MLP1"]) < 1e-6
    assert float(r["EXACT8"]) < 1e-6
    # BatchNorm in training mode: whole-batch statistics across the devices
    assert r["SEEN_BN8"] == "32x8"
    assert float(r["BN8"]) < 1e-6
    assert r["SEEN_BN_ODD"] == "24x8" and r["BN_ODD_FINITE"] == "True"
    assert r["BN_SMALL_ERROR"] == "3rows-8devices"
