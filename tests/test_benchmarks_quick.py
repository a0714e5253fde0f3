"""Each benchmark's --quick mode runs in CI and writes the JSON keys its issue names (look-ahead fidelity, CRC).

Speed targets are checked by hand in full mode; here only correctness fields are
asserted (errors small, correlations in range), never wall-clock numbers.
"""

from benchmark_runs import run_quick


def test_lookahead_vs_retraining_quick(tmp_path):
    d = run_quick("lookahead_vs_retraining", tmp_path)
    for k in ("speedup_vs_naive", "fidelity_cosine_median", "fidelity_spearman", "fraction_fitted_median"):
        assert k in d
    assert -1.0 <= d["fidelity_spearman"] <= 1.0
    assert d["fidelity_cosine_median"] > 0.5  # the NTK change points the way retraining moves (≈0.9 here)
    assert d["speedup_vs_naive"] > 0 and 0.0 < d["fraction_fitted_median"] <= 1.0
    seed = d["per_width"][0]["per_seed"][0]
    # the benchmark's per-candidate NTK changes reproduce jaxal.lookahead.core.scores (same pseudo-labels)
    assert seed["kernels"]["ntk"]["scores_vs_core_max_rel_diff"] < 1e-3
    assert set(seed["fidelity"]) == {"ntk", "infinite_standard", "infinite_ntk_param", "one_step_sgd", "residual"}
    assert set(d["active_learning"]["seed_0"]) == {"naive", "ntk", "random"}
    assert (tmp_path / "lookahead_vs_retraining.png").stat().st_size > 0


def test_crc_speed_quick(tmp_path):
    d = run_quick("crc_speed", tmp_path)
    assert d["crc_score_rel_diff"] < 1e-4 and d["crc_dual_speedup"] > 0
