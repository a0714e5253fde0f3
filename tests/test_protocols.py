"""Training protocols: the look-ahead protocol's settings, the loss stop rule,
inference-mode (frozen BatchNorm) training, and how the CLI and grids resolve them."""

import argparse
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal.cli import compare_configs, main, parse_arm
from jaxal.experiment import loop, protocols
from jaxal.experiment.config import ExperimentConfig
from jaxal.training.train import TrainConfig, init_variables, loss_fn, train

TINY = ["run", "--widths", "16", "--initial", "10", "--budget", "5", "--rounds", "1", "--epochs", "2",
        "--batch-size", "16", "--quiet"]


def test_apply_sets_the_protocol_and_keeps_explicit_fields():
    base = ExperimentConfig(strategy="mlmoc", start="shrink_perturb", train=TrainConfig(max_epochs=7))
    la = protocols.apply(base, "lookahead")
    assert (la.protocol, la.start, la.candidates, la.retrain_inference_mode) == ("lookahead", "warm", 1000, True)
    assert (la.head_init_scale, base.head_init_scale) == (0.0, 1.0)
    assert (la.train.loss, la.train.target_loss, la.train.target_accuracy) == ("squared", 0.01, 1.0)
    kept = protocols.apply(base, "lookahead", keep=["start"], keep_train=["max_epochs"])
    assert kept.start == "shrink_perturb" and kept.train.max_epochs == 7 and kept.train.loss == "squared"
    std = protocols.apply(la, "standard")
    assert (std.start, std.train.loss, std.train.target_loss, std.candidates) == ("cold", "cross_entropy", None, None)
    with pytest.raises(ValueError, match="lookahead"):
        protocols.apply(base, "nope")
    with pytest.raises(ValueError, match="protocol"):
        loop.validate(dataclasses.replace(base, protocol="nope"))


def _blobs(n=60, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    x = rng.normal(size=(n, d)).astype(np.float32) + 2.0 * np.eye(c, d, dtype=np.float32)[y]
    return x, y


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3)(nn.relu(nn.Dense(32)(x)))


def test_target_loss_trains_past_the_accuracy_rule():
    """With the accuracy rule only, training stops with a large squared residual; with
    ``target_loss`` it goes on until the (independently recomputed) mean loss is below it."""
    x, y = _blobs()
    module = _Tiny()
    v0 = init_variables(jax.random.key(0), module, x)
    acc_only = train(jax.random.key(1), module, v0, x, y, 3, TrainConfig(loss="squared", learning_rate=1e-2,
                                                                        max_epochs=500, target_accuracy=0.9))
    by_loss = train(jax.random.key(1), module, v0, x, y, 3, TrainConfig(loss="squared", learning_rate=1e-2,
                                                                       max_epochs=500, target_accuracy=0.9,
                                                                       target_loss=0.01))
    recomputed = float(jnp.mean(loss_fn("squared", module.apply(by_loss.variables, x), jnp.asarray(y), 3)))
    assert by_loss.reached_target and recomputed <= 0.01 + 1e-6
    assert by_loss.epochs > acc_only.epochs and acc_only.train_loss > 0.01
    with pytest.raises(ValueError, match="target_loss"):
        TrainConfig(target_loss=-1.0)


class _BN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(16)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
        h = nn.Dropout(0.5, deterministic=not train)(nn.relu(h))
        return nn.Dense(3)(h)


def test_inference_mode_freezes_batch_stats_and_drops_dropout():
    x, y = _blobs(seed=1)
    module = _BN()
    v0 = init_variables(jax.random.key(0), module, x)
    cfg = TrainConfig(loss="squared", max_epochs=3, learning_rate=1e-2)
    moved = train(jax.random.key(1), module, v0, x, y, 3, cfg)
    frozen = train(jax.random.key(1), module, v0, x, y, 3, dataclasses.replace(cfg, inference_mode=True))
    frozen_other_key = train(jax.random.key(2), module, v0, x, y, 3, dataclasses.replace(cfg, inference_mode=True,
                                                                                         batch_size=60))
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), v0["batch_stats"], frozen.variables["batch_stats"])
    assert all(jax.tree.leaves(same))
    changed = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), v0["batch_stats"], moved.variables["batch_stats"])
    assert not all(jax.tree.leaves(changed))
    # full-batch inference-mode training has no dropout left: the key only reorders the
    # batch (float summation order), whereas in training mode it draws the dropout masks
    frozen_full = train(jax.random.key(1), module, v0, x, y, 3, dataclasses.replace(cfg, inference_mode=True,
                                                                                     batch_size=60))
    for a, b in zip(jax.tree.leaves(frozen_full.variables), jax.tree.leaves(frozen_other_key.variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    drop_1 = train(jax.random.key(1), module, v0, x, y, 3, dataclasses.replace(cfg, batch_size=60))
    drop_2 = train(jax.random.key(2), module, v0, x, y, 3, dataclasses.replace(cfg, batch_size=60))
    assert not np.allclose(np.asarray(drop_1.variables["params"]["Dense_1"]["kernel"]),
                           np.asarray(drop_2.variables["params"]["Dense_1"]["kernel"]), rtol=1e-3)
    assert not np.allclose(np.asarray(frozen.variables["params"]["Dense_0"]["kernel"]),
                           np.asarray(v0["params"]["Dense_0"]["kernel"]))


def test_loop_retrains_in_inference_mode_after_round_zero(tmp_path, monkeypatch):
    seen, head_norms = [], []
    real = loop.train

    def spy(key, module, variables, x, y, num_classes, config):
        seen.append(config.inference_mode)
        head_norms.append(sum(float(jnp.sum(p**2)) for p in jax.tree.leaves(variables["params"]["head"])))
        return real(key, module, variables, x, y, num_classes, config)

    monkeypatch.setattr(loop, "train", spy)
    cfg = protocols.apply(ExperimentConfig(strategy="random", initial_size=10, budget=5, rounds=2,
                                           model_options={"widths": (8,)}, train=TrainConfig(max_epochs=2)),
                          "lookahead", keep_train=["max_epochs"])
    loop.run(cfg, tmp_path / "r", progress=False)
    assert seen == [False, True, True]
    # round 0 starts from a zero head (f0 = 0); warm rounds continue from the trained one
    assert head_norms[0] == 0.0 and head_norms[1] > 0 and head_norms[2] > 0
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert stored["protocol"] == "lookahead" and stored["start"] == "warm" and stored["train"]["loss"] == "squared"


def test_scale_head_scales_only_the_head_and_needs_one():
    from jaxal.models import create
    from jaxal.training.train import scale_head

    net = create("mlp", 3, input_shape=(4,), widths=(8,))
    v = init_variables(jax.random.key(0), net, np.zeros((1, 4), np.float32))
    half = scale_head(v, 0.5)
    np.testing.assert_allclose(half["params"]["head"]["kernel"], 0.5 * np.asarray(v["params"]["head"]["kernel"]))
    for a, b in zip(jax.tree.leaves({k: x for k, x in v["params"].items() if k != "head"}),
                    jax.tree.leaves({k: x for k, x in half["params"].items() if k != "head"})):
        np.testing.assert_array_equal(a, b)
    assert scale_head(v, 1.0) is v
    with pytest.raises(ValueError, match="head"):
        scale_head({"params": {"Dense_0": {}}}, 0.0)
    with pytest.raises(ValueError, match="head_init_scale"):
        loop.validate(ExperimentConfig(head_init_scale=-1.0))


def test_cli_protocol_defaults_and_explicit_flags(tmp_path):
    out = tmp_path / "o"
    assert main(TINY + ["--strategy", "random", "--protocol", "lookahead", "--out", str(out)]) == 0
    cfg = json.loads((out / "random" / "seed0" / "config.json").read_text())
    assert (cfg["protocol"], cfg["start"], cfg["candidates"], cfg["retrain_inference_mode"]) == \
        ("lookahead", "warm", 1000, True)
    assert (cfg["train"]["loss"], cfg["train"]["target_loss"], cfg["train"]["max_epochs"]) == ("squared", 0.01, 2)
    out2 = tmp_path / "o2"
    assert main(TINY + ["--strategy", "random", "--protocol", "lookahead", "--start", "cold", "--loss",
                        "cross_entropy", "--candidates", "50", "--out", str(out2)]) == 0
    cfg = json.loads((out2 / "random" / "seed0" / "config.json").read_text())
    assert (cfg["start"], cfg["train"]["loss"], cfg["candidates"], cfg["train"]["target_loss"]) == \
        ("cold", "cross_entropy", 50, 0.01)
    out3 = tmp_path / "o3"
    assert main(TINY + ["--strategy", "random", "--protocol", "standard", "--out", str(out3)]) == 0
    cfg = json.loads((out3 / "random" / "seed0" / "config.json").read_text())
    assert (cfg["protocol"], cfg["start"], cfg["train"]["loss"], cfg["candidates"]) == \
        ("standard", "cold", "cross_entropy", None)
    # no --protocol: the look-ahead protocol for supervised training, standard for SSL trainers
    from jaxal.cli import _configs, build_parser

    plain = _configs(build_parser().parse_args(["run", "--strategy", "random"]))[0]
    ssl = _configs(build_parser().parse_args(["run", "--strategy", "random", "--trainer", "fixmatch"]))[0]
    assert (plain.protocol, plain.start, ssl.protocol, ssl.start) == ("lookahead", "warm", "standard", "cold")


def test_arm_syntax_variants_and_sequential():
    assert parse_arm("mlmoc") == ("mlmoc", False, {})
    assert parse_arm("mlmoc-seq") == ("mlmoc", True, {})
    assert parse_arm("mlmoc[batch=greedy,eval_size=300]") == ("mlmoc", False, {"batch": "greedy", "eval_size": 300})
    assert parse_arm("crc[group_size=5]") == ("crc", False, {"group_size": 5})
    from jaxal.cli import build_parser

    args = build_parser().parse_args(["compare", "--strategies", "random,mlmoc,mlmoc[batch=greedy],mlmoc-seq",
                                      "--seeds", "2", "--option", "mlmoc.eval_size=100"])
    configs = compare_configs(args)
    labels = [(c.label, c.strategy, c.sequential, c.strategy_options.get("batch"), c.seed) for c in configs]
    assert len(configs) == 8
    assert (None, "mlmoc", False, None, 0) in labels and (None, "mlmoc", True, None, 1) in labels
    assert ("mlmoc[batch=greedy]", "mlmoc", False, "greedy", 1) in labels
    assert all(c.strategy_options.get("eval_size") == (100 if c.strategy == "mlmoc" else None) for c in configs)
    from jaxal.experiment.grid import label_of

    assert sorted({label_of(c) for c in configs}) == ["mlmoc", "mlmoc-seq", "mlmoc[batch=greedy]", "random"]
    dup = argparse.Namespace(**{**vars(args), "strategy": "mlmoc,mlmoc"})
    with pytest.raises(ValueError, match="twice"):
        compare_configs(dup)


def test_variant_labels_survive_the_printed_table():
    """Rich would read ``[batch=greedy]`` as markup and drop it from the table."""
    from rich.console import Console

    from jaxal.cli import results_table

    rec = {"round": 0, "n_labeled": 10, "test_accuracy": 0.5, "train_seconds": 1.0, "query_seconds": 0.0}
    console = Console(width=200, record=True)
    console.print(results_table({"mlmoc[batch=greedy]": [[rec]], "random": [[rec]]}))
    assert "acc mlmoc[batch=greedy]" in console.export_text()
