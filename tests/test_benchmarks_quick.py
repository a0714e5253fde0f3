"""Each benchmark's --quick mode runs in CI and writes the JSON keys its issue names.

Speed targets are checked by hand in full mode; here only correctness fields are
asserted (errors small, correlations in range), never wall-clock numbers.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent


def _run(script: str, tmp_path) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_lookahead_vs_retraining_quick(tmp_path):
    d = _run("lookahead_vs_retraining", tmp_path)
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


def test_ntk_engine_quick(tmp_path):
    d = _run("ntk_engine", tmp_path)
    assert d["max_rel_error_f32"] < 1e-4 and d["max_rel_error_f64"] < 1e-10
    assert d["mlp_structured_speedup_vs_jacobian"] > 0


def test_crc_speed_quick(tmp_path):
    d = _run("crc_speed", tmp_path)
    assert d["crc_score_rel_diff"] < 1e-4 and d["crc_dual_speedup"] > 0


@pytest.mark.parametrize("script", ["badge_speed"])
def test_badge_speed_quick(tmp_path, script):
    d = _run(script, tmp_path)
    for k in ("badge_speedup_vs_numpy_factorized", "badge_speedup_bf16_vs_numpy_factorized",
              "badge_over_bandwidth_floor", "badge_peak_bytes"):
        assert k in d
    assert d["badge_peak_bytes"] > 0


def test_lookahead_batch_modes_quick(tmp_path):
    d = _run("lookahead_batch_modes", tmp_path)
    dup = d["duplicate_fraction"]
    assert set(dup) == {"topk", "greedy", "sequential"} and all(0.0 <= v <= 1.0 for v in dup.values())
    # a greedy batch conditions on each pick, so a noisy copy of a picked point has (almost)
    # no posterior variance left and is not picked again in the same batch
    assert dup["greedy"] <= dup["topk"] and dup["greedy"] <= 0.05
    assert d["greedy_over_topk"] > 0 and all(q["topk"]["run_s"] > 0 for q in d["query"])


def test_interrupt_stress_quick(tmp_path):
    # SIGINT and SIGKILL at random moments: every exit clean (130 or killed), the resumed
    # records equal an uninterrupted run's (the script exits non-zero otherwise)
    d = _run("interrupt_stress", tmp_path)
    assert d["failures"] == [] and d["records_equal_reference"]
    assert d["signals_sent"] >= 1 and sum(d["outcomes"].values()) == d["starts"]
