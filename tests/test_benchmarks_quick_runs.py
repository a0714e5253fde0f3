"""Each benchmark's --quick mode runs in CI and writes the JSON keys its issue names (batch modes, interrupts).

Speed targets are checked by hand in full mode; here only correctness fields are
asserted (errors small, correlations in range), never wall-clock numbers.
"""

from benchmark_runs import run_quick


def test_lookahead_batch_modes_quick(tmp_path):
    d = run_quick("lookahead_batch_modes", tmp_path)
    dup = d["duplicate_fraction"]
    assert set(dup) == {"topk", "greedy", "sequential"} and all(0.0 <= v <= 1.0 for v in dup.values())
    # a greedy batch conditions on each pick, so a noisy copy of a picked point has (almost)
    # no posterior variance left and is not picked again in the same batch
    assert dup["greedy"] <= dup["topk"] and dup["greedy"] <= 0.05
    assert d["greedy_over_topk"] > 0 and all(q["topk"]["run_s"] > 0 for q in d["query"])


def test_interrupt_stress_quick(tmp_path):
    # SIGINT and SIGKILL at random moments: every exit clean (130 or killed), the resumed
    # records equal an uninterrupted run's (the script exits non-zero otherwise)
    d = run_quick("interrupt_stress", tmp_path)
    assert d["failures"] == [] and d["records_equal_reference"]
    assert d["signals_sent"] >= 1 and sum(d["outcomes"].values()) == d["starts"]
