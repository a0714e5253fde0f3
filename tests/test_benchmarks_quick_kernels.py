"""Each benchmark's --quick mode runs in CI and writes the JSON keys its issue names (NTK engine, BADGE).

Speed targets are checked by hand in full mode; here only correctness fields are
asserted (errors small, correlations in range), never wall-clock numbers.
"""

import pytest
from benchmark_runs import run_quick


def test_ntk_engine_quick(tmp_path):
    d = run_quick("ntk_engine", tmp_path)
    assert d["max_rel_error_f32"] < 1e-4 and d["max_rel_error_f64"] < 1e-10
    assert d["mlp_structured_speedup_vs_jacobian"] > 0


@pytest.mark.parametrize("script", ["badge_speed"])
def test_badge_speed_quick(tmp_path, script):
    d = run_quick(script, tmp_path)
    for k in ("badge_speedup_vs_numpy_factorized", "badge_speedup_bf16_vs_numpy_factorized",
              "badge_over_bandwidth_floor", "badge_peak_bytes"):
        assert k in d
    assert d["badge_peak_bytes"] > 0
