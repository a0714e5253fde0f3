"""Stopping rules against hand-worked histories, κ against its textbook formula, and the
signals a run records (:mod:`jaxal.stopping`, :mod:`jaxal.experiment.signals`)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxal import stopping
from jaxal.experiment import signals


def _history(**series):
    """Records of rounds 0..R-1 with ``n_labeled = 20 (r + 1)``, accuracy ``0.5 + 0.01 r``
    and the given signal series (``None`` entries stay missing)."""
    n = len(next(iter(series.values())))
    return [{"round": r, "n_labeled": 20 * (r + 1), "test_accuracy": 0.5 + 0.01 * r,
             "signals": {k: v[r] for k, v in series.items()}} for r in range(n)]


def test_cohen_kappa_matches_the_textbook_formula_and_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 4, size=50)
        b = np.where(rng.random(50) < 0.7, a, rng.integers(0, 4, size=50))
        assert stopping.cohen_kappa(a, b, 4) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    # hand-worked: 2x2 table [[20, 5], [10, 15]]: p_o = 0.7, p_e = (25*30 + 25*20)/50² = 0.5, κ = 0.4
    a = np.array([0] * 25 + [1] * 25)
    b = np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    assert stopping.cohen_kappa(a, b) == pytest.approx(0.4)
    assert stopping.cohen_kappa([2, 2, 2], [2, 2, 2]) == 1.0
    with pytest.raises(ValueError, match="one length"):
        stopping.cohen_kappa([0, 1], [0])


def test_each_rule_stops_where_the_hand_worked_history_says():
    kappa = [None, 0.90, 0.99, 0.995, 0.986, 1.0, 0.999]
    # means of the last 3: r3 (0.9, 0.99, 0.995) = 0.962 no; r4 (0.99, 0.995, 0.986) = 0.9903 -> stop at 4
    h = _history(kappa=kappa, uncertainty=[0.9, 0.5, 0.2, 0.06, 0.05, 0.01, 0.0],
                 change=[None, 0.3, 0.1, 0.004, 0.0, 0.0, 0.0],
                 relative_output_change=[None, 4.0, 2.0, 0.5, 0.39, 0.41, 0.1],
                 lambda_min_per_label=[None, 1.0, 0.5, 0.49, 0.48, 0.47, 0.47])
    assert stopping.stabilizing_predictions(h, 0.99, 3) == 4
    assert stopping.stabilizing_predictions(h, 0.999, 2) == 6  # (1.0 + 0.999)/2 = 0.9995
    assert stopping.overall_uncertainty(h, 0.05) == 4
    assert stopping.classification_change(h, 0.005) == 3
    assert stopping.output_change(h, 0.1) == 4  # first value 4.0: 0.39 <= 0.4
    # plateau: window 2 at r=4: values (0.5, 0.49, 0.48) all within 5% of 0.5 -> 4
    assert stopping.eigenvalue_plateau(h, 0.05, 2) == 4
    assert stopping.eigenvalue_plateau(h, 0.001, 2) is None
    assert stopping.max_budget(h, 60) == 2 and stopping.max_budget(h, 1000) is None


def test_parse_binds_parameters_and_names_bad_rules():
    h = _history(kappa=[None, 0.5, 0.95, 0.96, 0.97])
    rule = stopping.parse("kappa:0.95:2")
    assert rule.text == "kappa:0.95:2" and rule(h) == 3
    assert stopping.parse("kappa").text == "kappa:0.99:3"
    assert stopping.parse("budget:60")(h) == 2
    for bad, words in [("nope", "unknown stopping rule"), ("budget", "needs its budget"),
                       ("kappa:x", "must be float"), ("change:0.1:3", "at most 1"), ("kappa:-1", "positive")]:
        with pytest.raises(ValueError, match=words):
            stopping.parse(bad)


def test_stop_round_takes_the_earliest_rule_and_where_reports_not_applicable():
    h = _history(kappa=[None, 0.5, 0.995, 0.996, 0.999], change=[None, 0.2, 0.001, 0.0, 0.0])
    assert stopping.stop_round(h, ["kappa:0.99:2", "change:0.01"]) == (2, "change:0.01")
    assert stopping.stop_round(h, ["budget:1000"]) is None
    at = stopping.where(h, "change:0.01")
    assert (at.stopped, at.round, at.n_labeled, at.final_n_labeled) == (True, 2, 60, 100)
    assert at.accuracy == pytest.approx(0.52) and at.final_accuracy == pytest.approx(0.54)
    never = stopping.where(h, "budget:1000")
    assert never.applicable and not never.stopped and never.round == 4
    missing = stopping.where(h, "output_change")  # this run's strategy measured no look-ahead score
    assert not missing.applicable and not missing.stopped
    with pytest.raises(ValueError, match="round order"):
        stopping.stop_round(h[::-1], ["change"])


def test_round_signals_match_a_direct_computation():
    rng = np.random.default_rng(1)
    prev, cur = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    ent, norm = rng.random(40), rng.random(40) + 1
    unlabeled = rng.random(40) < 0.6
    current = signals.StopSetPredictions(cur, ent, norm)
    out = signals.round_signals(current, signals.StopSetPredictions(prev, ent * 0, norm), unlabeled, 3)
    assert out["change"] == pytest.approx(np.sum((prev != cur) & unlabeled) / np.sum(unlabeled))
    assert out["uncertainty"] == pytest.approx(ent[unlabeled].mean())
    assert out["kappa"] == pytest.approx(stopping.cohen_kappa(prev, cur, 3))
    assert out["output_scale"] == pytest.approx(norm.mean())
    assert signals.round_signals(current, None, unlabeled, 3)["kappa"] is None
    q = signals.query_signals({"objective": "mlmoc", "max_score": 2.5, "eval_size": 10}, 0.5, 30)
    assert q["max_output_change"] == 2.5 and q["relative_output_change"] == pytest.approx(0.5)
    assert q["lambda_min"] is None and signals.query_signals({"objective": "eer", "max_score": 1.0}, 1.0, 3) == {
        "max_output_change": None, "relative_output_change": None, "lambda_min": None, "lambda_min_per_label": None}
    crc = signals.query_signals({"group_scores": [0.3, 0.2]}, None, 30)
    assert crc["lambda_min"] == 0.3 and crc["lambda_min_per_label"] == pytest.approx(0.01)


def test_stop_set_summary_is_class_normalised_entropy_and_norm():
    import jax.numpy as jnp

    logits = jnp.array([[30.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, -40.0, -40.0], [0.0, 3.0, 0.0, 4.0]])
    out = np.asarray(signals._summary(logits))
    np.testing.assert_allclose(out[:, 1], [0.0, 1.0, np.log(2) / np.log(4), out[3, 1]], atol=1e-5)
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 3])
    np.testing.assert_allclose(out[:, 2], np.linalg.norm(np.asarray(logits), axis=1), rtol=1e-6)
    p = np.exp(np.asarray(logits[3]) - np.log(np.exp(np.asarray(logits[3])).sum()))
    assert out[3, 1] == pytest.approx(-(p * np.log(p)).sum() / np.log(4), rel=1e-5)


def test_run_stops_where_a_rule_fires_and_plot_reports_every_rule(tmp_path, capsys):
    from jaxal.cli import main
    from jaxal.experiment.records import load_records

    out = tmp_path / "o"
    argv = ["run", "--widths", "16", "--initial", "10", "--budget", "5", "--rounds", "4", "--epochs", "2",
            "--batch-size", "16", "--candidates", "50", "--quiet", "--strategy", "entropy", "--out", str(out)]
    assert main(argv + ["--stop", "budget:20"]) == 0
    assert "stopped by budget:20" in capsys.readouterr().out
    recs = load_records(out / "entropy" / "seed0")
    assert [r["n_labeled"] for r in recs] == [10, 15, 20] and recs[-1]["stopped_by"] == "budget:20"
    assert recs[0]["signals"]["kappa"] is None and all(-1 <= r["signals"]["kappa"] <= 1 for r in recs[1:])
    # the rule is not part of the run's identity: resumed with a later one, the run goes on
    assert main(argv + ["--stop", "budget:25", "--resume"]) == 0
    assert [r["n_labeled"] for r in load_records(out / "entropy" / "seed0")] == [10, 15, 20, 25]
    assert main(argv + ["--stop", "nope"]) == 2
    assert "unknown stopping rule" in capsys.readouterr().err
    assert main(["plot", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kappa:0.99:3" in text and "output_change:0.1" in text
    summary = (out / "summary.md").read_text()
    assert "Where each stopping rule would have stopped" in summary
    rows = (out / "stopping.csv").read_text().splitlines()
    assert rows[0].startswith("label,rule,seeds") and len(rows) == 1 + len(stopping.DEFAULT_RULES)
    assert any(r.endswith(",n/a") and "output_change" in r for r in rows)  # entropy measures no look-ahead change
