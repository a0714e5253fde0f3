"""Compilation is paid once: a second identical experiment in the same process compiles
nothing (every jit cache hits: Model functions compare by value, no program is built
per call), and a round's shapes do not multiply programs beyond what they need.

Counted with JAX's own monitoring events, never with wall-clock time.
"""

from __future__ import annotations

import jax
import pytest

from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.loop import run
from jaxal.training.train import TrainConfig

_COUNT = {"n": 0}


def _on_duration(event: str, duration: float, **_: object) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COUNT["n"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compilations(fn) -> int:
    before = _COUNT["n"]
    fn()
    return _COUNT["n"] - before


@pytest.mark.parametrize("strategy, options", [
    ("entropy", {}),
    ("mlmoc", {"batch": "greedy"}),
    ("mlmoc", {"sequential": True}),
])
def test_a_second_identical_run_compiles_nothing(tmp_path, strategy, options):
    options = dict(options)
    sequential = options.pop("sequential", False)
    config = ExperimentConfig(dataset="digits", model="mlp", model_options={"widths": (16,)}, strategy=strategy,
                              strategy_options=options, sequential=sequential, initial_size=10, budget=5, rounds=1,
                              candidates=60, train=TrainConfig(max_epochs=3, loss="squared"), start="warm")
    assert compilations(lambda: jax.jit(lambda x: x * 3.0 + 1.0)(2.0)) == 1  # the counter sees compiles
    first = run(config, str(tmp_path / "a"))
    records: list = []
    assert compilations(lambda: records.extend(run(config, str(tmp_path / "b")))) == 0
    # the records say so too: no compile seconds in any phase of the second run
    assert all(r["train_compile_seconds"] == 0.0 and r["query_compile_seconds"] == 0.0 for r in records)
    assert all(0.0 <= r["query_compile_seconds"] <= r["query_seconds"] + 1e-3 for r in first)


def test_compile_clock_counts_a_compilation():
    from jaxal.experiment import compile_clock

    before, count = compile_clock.compile_seconds(), compile_clock.compilations()
    # this test's own listener counts the same compilation independently
    seen = compilations(lambda: jax.jit(lambda x: x * 7.0 - 2.0)(1.5).block_until_ready())
    assert seen == 1
    assert compile_clock.compile_seconds() > before
    assert compile_clock.compilations() - count == seen


def test_batchnorm_models_share_programs_only_with_the_same_statistics():
    """Rebuilt around the same BatchNorm arrays, a Model reuses every compiled program;
    with other statistics it compiles anew and never sees the old constants."""
    import numpy as np

    from jaxal import models
    from jaxal.model import predict_logits
    from models_for_tests import TinyBNNet
    from jaxal.training.train import init_variables

    net = TinyBNNet(8)
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    v = init_variables(jax.random.key(0), net, x)
    assert "batch_stats" in v
    out = predict_logits(models.as_model(net, v), x)
    again = models.as_model(net, dict(v))  # a new Model, a new dict, the same arrays
    assert compilations(lambda: predict_logits(again, x).block_until_ready()) == 0
    shifted = jax.tree_util.tree_map(lambda a: a + 1.0, v["batch_stats"])
    other = models.as_model(net, {**v, "batch_stats": shifted})
    assert compilations(lambda: predict_logits(other, x).block_until_ready()) >= 1
    assert not np.allclose(np.asarray(predict_logits(other, x)), np.asarray(out))


@pytest.mark.parametrize("strategy, options, width", [("entropy", {}, 12), ("mlmoc", {"batch": "greedy"}, 13)])
def test_rounds_in_one_bucket_compile_nothing(tmp_path, strategy, options, width):
    """Labeled sizes 20, 25, 30 share the bucket of 32 rows: after the first of those
    rounds, training, prediction and the query compile nothing (a network width no
    other test uses, so the first round in the bucket compiles here)."""
    from jaxal.ops.buckets import bucket

    config = ExperimentConfig(dataset="digits", model="mlp", model_options={"widths": (width,)}, strategy=strategy,
                              strategy_options=options, initial_size=20, budget=5, rounds=2, candidates=50,
                              train=TrainConfig(max_epochs=2, loss="squared"), start="cold")
    records = run(config, str(tmp_path / "run"))
    sizes = [r["n_labeled"] for r in records]
    assert sizes == [20, 25, 30] and {bucket(n) for n in sizes} == {32}
    # the first use of the bucket compiles (the clocks see it, in round 0 and in a later
    # round): training on 20 labels, and round 1's query, the first made from the bucket
    # of 32 (the 20 labels of round 0) ...
    assert records[0]["train_compile_seconds"] > 0 and records[1]["query_compile_seconds"] > 0
    # ... and later rounds in the same bucket reuse every program: training on 25 and 30
    # labels, and the query of round 2 (made from the 25 labels of round 1)
    assert records[1]["train_compile_seconds"] == 0.0 and records[2]["train_compile_seconds"] == 0.0
    assert records[2]["query_compile_seconds"] == 0.0


def test_pool_prediction_compiles_once_per_bucket():
    """A pool that shrinks inside one bucket keeps the prediction program, and the
    padded rows change nothing."""
    import numpy as np

    from jaxal import models
    from jaxal.model import predict_logits

    net = models.create("mlp", 3, input_shape=(6,), widths=(10,))
    x = np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32)
    model = models.as_model(net, net.init(jax.random.key(0), x[:1]))
    predict_logits(model, x[:33])  # bucket 64
    for n in (34, 40, 47, 64):
        assert compilations(lambda n=n: predict_logits(model, x[:min(n, 40)]).block_until_ready()) == 0
    direct = np.asarray(net.apply(net.init(jax.random.key(0), x[:1]), x[:37]))
    np.testing.assert_allclose(np.asarray(predict_logits(model, x[:37])), direct, rtol=1e-5, atol=1e-6)
