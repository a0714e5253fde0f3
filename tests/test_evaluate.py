"""The comparison evaluation on synthetic records: statistics by hand, files, skips."""

import csv
import json
import math

import numpy as np
import pytest

from jaxal.experiment import records as ev
from jaxal.experiment import stats as metrics
from jaxal.experiment.report import write_report


def records(label, seed, accs, initial=10, batch=5, sequential=False):
    """Round records as jaxal.experiment.loop writes them (the fields the evaluation reads)."""
    return [
        {"round": r, "n_labeled": initial + r * batch, "test_accuracy": float(a), "strategy": label,
         "seed": seed, "dataset": "synthetic", "model": "mlp"}
        for r, a in enumerate(accs)
    ]


def synthetic(gain=0.1, seeds=5, rounds=6, labels=("random", "good", "bad")):
    """random: a saturating curve plus seed noise; good = random + gain; bad = random - gain."""
    rng = np.random.default_rng(0)
    base = 0.9 - 0.6 * np.exp(-np.arange(rounds + 1) / 2.0)
    shift = {"random": 0.0, "good": gain, "bad": -gain, "same": 0.0}
    runs = {}
    for label in labels:
        for s in range(seeds):
            noise = rng.normal(0, 0.01, rounds + 1)
            runs.setdefault(label, {})[s] = records(label, s, base + shift[label] + noise)
    return runs


def is_png(path, min_bytes=10_000):
    data = open(path, "rb").read()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > min_bytes


def test_aubc_csv_matches_metrics_by_hand(tmp_path):
    runs = {
        "random": {0: records("random", 0, [0.5, 0.6, 0.8]), 1: records("random", 1, [0.3, 0.6, 0.6])},
        "margin": {0: records("margin", 0, [0.5, 0.7, 0.9]), 1: records("margin", 1, [0.3, 0.8, 0.7])},
    }
    report = write_report(runs, tmp_path)
    rows = {r["strategy"]: r for r in csv.DictReader(open(tmp_path / "aubc.csv"))}
    # seed 0 of random: mean of (0.5, 0.6, 0.8); trapezoid over 10..20 labels: (5.5 + 7) / 2 / 10
    assert metrics.aubc([0.5, 0.6, 0.8]) == pytest.approx(1.9 / 3)
    assert metrics.aubc_trapezoid([10, 15, 20], [0.5, 0.6, 0.8]) == pytest.approx(0.625)
    random_aubc = np.mean([1.9 / 3, 1.5 / 3])
    assert float(rows["random"]["aubc"]) == pytest.approx(random_aubc)
    assert float(rows["random"]["aubc_trapezoid"]) == pytest.approx(np.mean([0.625, 0.525]))
    margin_aubc = np.mean([2.1 / 3, 1.8 / 3])
    assert float(rows["margin"]["aubc"]) == pytest.approx(margin_aubc)
    assert float(rows["margin"]["diff_vs_reference"]) == pytest.approx(margin_aubc - random_aubc)
    # paired differences 0.2/3 and 0.3/3: t-test with 1 degree of freedom
    from scipy import stats

    p = stats.ttest_rel([2.1 / 3, 1.8 / 3], [1.9 / 3, 1.5 / 3]).pvalue
    assert float(rows["margin"]["pvalue_vs_reference"]) == pytest.approx(p)
    assert math.isnan(float(rows["random"]["pvalue_vs_reference"]))
    # 95% CI half-width of random's AUBC: t(0.975, 1) * sd / sqrt(2)
    half = stats.t.ppf(0.975, 1) * np.std([1.9 / 3, 1.5 / 3], ddof=1) / np.sqrt(2)
    assert float(rows["random"]["aubc_ci95"]) == pytest.approx(half)
    assert [r.label for r in report.rows] == ["margin", "random"]  # best first
    assert report.budgets == [10, 15, 20]


def test_report_files_known_winner_and_summary(tmp_path):
    report = write_report(synthetic(), tmp_path)
    for name in ("curves.png", "diff_to_random.png", "penalty.png"):
        assert is_png(tmp_path / name), name
    pm = report.penalty
    i = {s: k for k, s in enumerate(pm.strategies)}
    # budgets M + 2^(m-1) B = 15, 20, 30, 50 (50 > 40 = last size, so it stops at 30 at the latest)
    assert pm.budgets[0] == 15 and set(pm.budgets) <= {15, 20, 30}
    assert pm.matrix[i["good"], i["random"]] == 1.0 and pm.matrix[i["good"], i["bad"]] == 1.0
    assert pm.matrix[i["random"], i["good"]] == 0.0 and pm.matrix[i["bad"], i["random"]] == 0.0
    assert pm.column_means[i["good"]] == 0.0 and pm.column_means[i["bad"]] == 1.0
    lines = list(csv.reader(open(tmp_path / "penalty.csv")))
    assert lines[0] == ["row_beats_column"] + pm.strategies
    assert lines[-2][0] == "column_mean" and float(lines[-2][1 + i["bad"]]) == 1.0

    text = (tmp_path / "summary.md").read_text()
    table = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for label in ("random", "good", "bad"):
        assert label in table
    assert "better" in table["good"] and "worse" in table["bad"]
    assert "Penalty matrix" in text and "column mean" in text


def test_difference_curves_are_paired_per_seed():
    curves = {
        "random": {0: {10: 0.5, 15: 0.6}, 1: {10: 0.1, 15: 0.2}, 2: {10: 0.9, 15: 0.9}},
        "x": {0: {10: 0.6, 15: 0.8}, 1: {10: 0.2, 15: 0.4}},  # no seed 2: paired over 0 and 1 only
    }
    n, mean, half = ev.difference_curves(curves)["x"]
    np.testing.assert_allclose(n, [10, 15])
    np.testing.assert_allclose(mean, [0.1, 0.2])
    np.testing.assert_allclose(half, [0.0, 0.0], atol=1e-12)  # identical differences: no spread


def test_without_random_skips_differences_and_penalty(tmp_path):
    runs = synthetic(labels=("good", "bad"))
    report = write_report(runs, tmp_path)
    assert is_png(tmp_path / "curves.png")
    assert not (tmp_path / "diff_to_random.png").exists() and not (tmp_path / "penalty.csv").exists()
    assert report.penalty is None
    text = (tmp_path / "summary.md").read_text()
    assert "no `random` runs" in text and "| good |" in text and "| bad |" in text


def test_load_runs_labels_sequential_and_refuses_duplicates(tmp_path):
    def write_run(path, label, seed, sequential):
        path.mkdir(parents=True)
        (path / "records.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records(label, seed, [0.4, 0.5])))
        (path / "config.json").write_text(json.dumps({"strategy": label, "seed": seed, "sequential": sequential}))

    write_run(tmp_path / "a" / "mlmoc" / "seed0", "mlmoc", 0, False)
    write_run(tmp_path / "a" / "mlmoc-seq" / "seed0", "mlmoc", 0, True)
    runs = ev.load_runs([tmp_path / "a"])
    assert sorted(runs) == ["mlmoc", "mlmoc-seq"] and list(runs["mlmoc-seq"]) == [0]
    assert ev.design(runs) == (10, 5)
    write_run(tmp_path / "b" / "seed0", "mlmoc", 0, False)
    with pytest.raises(ValueError, match="two runs of 'mlmoc' seed 0"):
        ev.load_runs([tmp_path / "a", tmp_path / "b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run directory"):
        ev.find_run_dirs([tmp_path / "empty"])


def test_paired_pvalue_edge_cases():
    assert math.isnan(metrics.paired_pvalue([0.5], [0.4]))
    assert metrics.paired_pvalue([0.5, 0.6], [0.4, 0.5]) == 0.0  # constant nonzero difference
    assert metrics.paired_pvalue([0.5, 0.6], [0.5, 0.6]) == 1.0
    with pytest.raises(ValueError, match="same length"):
        metrics.paired_pvalue([0.5, 0.6], [0.5])
