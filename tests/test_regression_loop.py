"""Regression end to end: data sets with real targets, squared-loss training and
evaluation, the loop's records, and the report judged by RMSE (lower is better)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxal import data, data_regression
from jaxal import models as models_lib
from jaxal.experiment import records as ev
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.loop import run
from jaxal.experiment.report import verdict, write_report
from jaxal.experiment.stats import penalty_matrix
from jaxal.model import predict_logits
from jaxal.strategies import select
from jaxal.training.train import TrainConfig, evaluate, init_variables, train


@pytest.mark.parametrize("name", sorted(data_regression.LOADERS))
def test_regression_sets_are_standardised_real_targets(name):
    ds = data.load(name, **({"num_samples": 200} if name.startswith("friedman") else {}))
    assert ds.task == "regression" and ds.num_classes == 1
    assert ds.y_train.dtype == np.float32 and ds.y_train.ndim == 1
    np.testing.assert_allclose([ds.y_train.mean(), ds.y_train.std()], [0.0, 1.0], atol=1e-4)
    assert ds.x_train.shape[0] == ds.y_train.shape[0] and ds.x_test.shape[1:] == ds.x_train.shape[1:]


def test_friedman1_is_the_textbook_function():
    x, y, _, _ = data_regression.friedman(1, seed=4, num_samples=50, noise=0.0)
    direct = 10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    np.testing.assert_allclose(y, direct, rtol=1e-12)


def test_digits_angle_targets_are_the_rotation():
    """Rotating a test image back by its target angle brings it closest to its source
    digit among the originals (the angle is what was applied)."""
    from scipy.ndimage import rotate
    from sklearn.datasets import load_digits

    x_tr, y_tr, _, _ = data_regression.digits_angle(seed=2, max_angle=45.0)
    images = load_digits().images / 16.0
    assert np.all(np.abs(y_tr) <= 45.0)
    for i in range(5):
        back = rotate(x_tr[i, ..., 0], -y_tr[i], reshape=False, order=1)
        wrong = rotate(x_tr[i, ..., 0], y_tr[i], reshape=False, order=1)
        nearest = np.min(np.sum((images - back) ** 2, axis=(1, 2)))
        assert nearest < np.min(np.sum((images - wrong) ** 2, axis=(1, 2))) or abs(y_tr[i]) < 5


def test_npz_with_fractional_targets_is_regression(tmp_path):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.normal(size=(30, 3)), y_train=rng.normal(size=(30, 2)) * 5 + 2,
                  x_test=rng.normal(size=(10, 3)), y_test=rng.normal(size=(10, 2)))
    np.savez(tmp_path / "r.npz", **arrays)
    ds = data.load(str(tmp_path / "r.npz"))
    assert ds.task == "regression" and ds.num_classes == 2
    mean, std = arrays["y_train"].mean(0), arrays["y_train"].std(0)
    np.testing.assert_allclose(ds.y_test, (arrays["y_test"] - mean) / std, rtol=1e-5)
    np.savez(tmp_path / "c.npz", **{**arrays, "y_train": np.arange(30) % 3, "y_test": np.arange(10) % 3})
    assert data.load(str(tmp_path / "c.npz")).task == "classification"
    with pytest.raises(ValueError, match="balanced initial set needs class labels"):
        data.initial_indices(jax.random.key(0), ds.y_train[:, 0], 4, balanced=True)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1).astype(np.float32)
    module = models_lib.create("mlp", 2, input_shape=(3,), widths=(8,))
    variables = init_variables(jax.random.key(0), module, x)
    result = train(jax.random.key(1), module, variables, x, y, 2, TrainConfig(loss="mse", max_epochs=30, batch_size=16))
    return module, result, x, y


def test_mse_training_and_evaluation_match_a_direct_computation(fitted):
    module, result, x, y = fitted
    f = np.asarray(predict_logits(models_lib.as_model(module, result.variables), x), np.float64)
    mae, mse = evaluate(module, result.variables, x, y, 2, "mse")
    np.testing.assert_allclose(mse, np.mean(np.sum((f - y) ** 2, axis=1)), rtol=1e-5)
    np.testing.assert_allclose(mae, np.mean(np.abs(f - y)), rtol=1e-5)
    np.testing.assert_allclose(result.train_loss, mse, rtol=1e-5)
    assert result.epochs == 30 and not result.reached_target  # no target_loss: the loss rule never stops it
    with pytest.raises(ValueError, match=r"regression targets y must be real numbers \[n\] \(one output\) or \[n, 2\]"):
        evaluate(module, result.variables, x, y[:, 0], 2, "mse")


def test_classification_strategies_refuse_regression(fitted):
    module, result, x, y = fitted
    model = models_lib.as_model(module, result.variables)
    with pytest.raises(ValueError, match="serves classification, not regression; strategies for regression: .*random"):
        select("entropy", jax.random.key(0), model, x_labeled=x[:5], y_labeled=y[:5], x_pool=x, budget=3,
               task="regression")
    picks = select("random", jax.random.key(0), model, x_labeled=x[:5], y_labeled=y[:5], x_pool=x, budget=3,
                   task="regression")
    assert len(set(picks.tolist())) == 3


def test_a_regression_run_records_rmse_and_the_report_ranks_by_it(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 4))
    y = x[:, 0] - 0.5 * x[:, 1] ** 2 + 0.1 * rng.normal(size=120)
    np.savez(tmp_path / "reg.npz", x_train=x[:90], y_train=y[:90], x_test=x[90:], y_test=y[90:])
    config = ExperimentConfig(dataset=str(tmp_path / "reg.npz"), model="mlp", model_options={"widths": (8,)},
                              strategy="random", initial_size=10, budget=10, rounds=2, seed=0, candidates=None,
                              train=TrainConfig(max_epochs=5, batch_size=16))
    records = run(config, tmp_path / "run")
    assert [r["n_labeled"] for r in records] == [10, 20, 30]
    for r in records:
        assert r["task"] == "regression" and r["test_accuracy"] is None and r["train_accuracy"] is None
        np.testing.assert_allclose(r["test_rmse"], np.sqrt(r["test_loss"]), rtol=1e-12)
    assert records[0]["signals"]["output_change"] is None and records[1]["signals"]["output_change"] > 0
    with pytest.raises(ValueError, match="balanced_init needs classes"):
        run(dataclasses.replace(config, balanced_init=True), tmp_path / "run2")

    # The report reads RMSE: a copy of the runs with every RMSE lowered is the better arm.
    lines = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    base = [json.loads(s) for s in lines]
    runs = {"random": {0: base, 1: base}, "better": {0: [{**r, "test_rmse": r["test_rmse"] - 0.1} for r in base],
                                                     1: [{**r, "test_rmse": r["test_rmse"] - 0.12} for r in base]}}
    report = write_report(runs, tmp_path / "report")
    assert report.meta["metric"] == ev.RMSE and [r.label for r in report.rows] == ["better", "random"]
    assert "lower better" in (tmp_path / "report" / "summary.md").read_text()


def test_lower_is_better_statistics_are_the_negated_ones():
    """Penalty matrix, AUBC order and verdicts on RMSE curves equal those on −RMSE read
    as higher-is-better: the direction is the only difference."""
    rng = np.random.default_rng(3)
    sizes = [10, 20, 40, 80, 160]
    curves = {name: {s: {n: float(shift + 1.0 / np.sqrt(n) + 0.01 * rng.normal()) for n in sizes} for s in range(5)}
              for name, shift in (("random", 0.0), ("a", -0.05), ("b", 0.03))}
    negated = {k: {s: {n: -v for n, v in c.items()} for s, c in by.items()} for k, by in curves.items()}
    low = penalty_matrix(curves, initial=10, batch=10, higher_is_better=False)
    high = penalty_matrix(negated, initial=10, batch=10)
    assert low.budgets == high.budgets
    np.testing.assert_array_equal(low.matrix, high.matrix)
    assert low.matrix[0].sum() > 0  # the lowered arm wins somewhere
    rows_low, _ = ev.aubc_rows(curves, higher_is_better=False)
    rows_high, _ = ev.aubc_rows(negated)
    assert [r.label for r in rows_low] == [r.label for r in rows_high] == ["a", "random", "b"]
    assert [verdict(r, higher_is_better=False) for r in rows_low] == [verdict(r) for r in rows_high]


def test_the_command_line_defaults_to_regression_strategies_on_a_regression_set():
    import argparse

    from jaxal.cli import DEFAULT_REGRESSION_STRATEGIES, DEFAULT_STRATEGIES, _strategies_or_default
    from jaxal.strategies.base import entry

    assert _strategies_or_default(argparse.Namespace(strategy=None, dataset="friedman1"), DEFAULT_STRATEGIES) \
        == DEFAULT_REGRESSION_STRATEGIES
    assert _strategies_or_default(argparse.Namespace(strategy=None, dataset="digits"), DEFAULT_STRATEGIES) \
        == DEFAULT_STRATEGIES
    assert _strategies_or_default(argparse.Namespace(strategy="random", dataset="friedman1"), "x") == "random"
    assert all("regression" in entry(n).tasks for n in DEFAULT_REGRESSION_STRATEGIES.split(","))
