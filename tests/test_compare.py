"""`jaxal compare` / `jaxal plot` end to end on a tiny grid: pairing, skip, resume, refusal."""

import dataclasses
import os

import pytest

from jaxal.cli import build_parser, compare_configs, main
from jaxal.experiment.grid import compare, plan, run_grid, run_status
from jaxal.experiment.records import load_records

TINY = ["--widths", "32", "--initial", "10", "--budget", "5", "--rounds", "2", "--epochs", "3",
        "--batch-size", "16", "--candidates", "40", "--quiet"]


def grid_args(out, strategies="random,entropy", seeds="1", extra=()):
    return ["compare", "--strategies", strategies, "--seeds", seeds, *TINY, *extra, "--out", str(out)]


def configs_of(argv):
    return compare_configs(build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A finished 2-strategy x 1-seed comparison written by the CLI."""
    out = tmp_path_factory.mktemp("cmp") / "grid"
    assert main(grid_args(out)) == 0
    return out


def is_png(path):
    data = open(path, "rb").read()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_compare_writes_paired_runs_and_evaluation(grid, capsys):
    for name in ("curves.png", "diff_to_random.png"):
        assert is_png(grid / name)
    for name in ("aubc.csv", "summary.md"):
        assert (grid / name).stat().st_size > 0
    summary = (grid / "summary.md").read_text()
    assert "| random |" in summary and "| entropy |" in summary
    # one seed: no test possible, and the summary says why the penalty matrix is missing
    assert "penalty matrix skipped" in summary
    rand, ent = load_records(grid / "random" / "seed0"), load_records(grid / "entropy" / "seed0")
    assert [r["n_labeled"] for r in ent] == [10, 15, 20]
    # same seed: same initial set and same initial model, so round 0 is identical
    assert rand[0]["chosen"] == ent[0]["chosen"]
    assert rand[0]["test_accuracy"] == ent[0]["test_accuracy"]


def test_rerun_skips_finished_runs(grid):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in grid.glob("*/seed0/records.jsonl")}
    events = []
    runs = run_grid(configs_of(grid_args(grid)), grid, on_event=lambda cell, e, r: events.append((cell.label, e, r)))
    assert sorted(events) == [("entropy", "skipped", 2), ("random", "skipped", 2)]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in grid.glob("*/seed0/records.jsonl")} == before
    assert [r["round"] for r in runs["entropy"][0]] == [0, 1, 2]


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "grid"
    configs = configs_of(grid_args(out, strategies="margin"))

    def kill(cell, event, r):
        if (event, r) == ("checkpointed", 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(configs, out, on_event=kill)
    (cell,) = plan(configs, out)
    assert run_status(cell) == "partial"
    events = []
    runs, report = compare(configs, out, on_event=lambda cell, e, r: events.append((e, r)))
    assert events == [("queried", 2), ("trained", 2), ("recorded", 2), ("checkpointed", 2)]
    assert [r["n_labeled"] for r in runs["margin"][0]] == [10, 15, 20]
    assert run_status(cell) == "done"
    assert "no `random` runs" in (out / "summary.md").read_text()


def test_plot_on_a_compare_dir_writes_the_evaluation(grid, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["plot", str(grid), "--out", str(out)]) == 0
    assert is_png(out / "curves.png") and is_png(out / "diff_to_random.png")
    assert "| entropy |" in (out / "summary.md").read_text()
    assert "summary.md" in capsys.readouterr().out


def test_changed_settings_are_refused_before_running(grid, capsys):
    assert main(grid_args(grid, extra=["--lr", "0.5"])) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "learning_rate" in err and "Traceback" not in err


def test_sequential_arms_and_bad_names():
    argv = grid_args("unused", strategies="random,mlmoc,mlmoc-seq", seeds="2")
    cells = plan(configs_of(argv), "o")
    assert [(c.label, c.seed, c.config.sequential) for c in cells] == [
        ("random", 0, False), ("mlmoc", 0, False), ("mlmoc-seq", 0, True),
        ("random", 1, False), ("mlmoc", 1, False), ("mlmoc-seq", 1, True),
    ]
    assert cells[2].run_dir == os.path.join("o", "mlmoc-seq", "seed0")
    assert configs_of(grid_args("unused", extra=["--model-option", "dropout_rate=0.25"]))[0].model_options == {
        "widths": (32,), "dropout_rate": 0.25}
    with pytest.raises(ValueError, match="no sequential mode"):
        configs_of(grid_args("unused", strategies="random,entropy-seq"))
    with pytest.raises(ValueError, match="twice"):
        configs_of(grid_args("unused", strategies="random,random"))


def test_explicit_labels_name_arms_of_one_strategy():
    (cold,) = configs_of(grid_args("unused", strategies="random"))
    both = [cold, dataclasses.replace(cold, start="warm")]
    cells = plan(both, "o", labels=["cold", "warm"])
    assert [c.run_dir for c in cells] == [os.path.join("o", "cold", "seed0"), os.path.join("o", "warm", "seed0")]
    with pytest.raises(ValueError, match="twice"):
        plan(both, "o")  # both would be labelled 'random'
    with pytest.raises(ValueError, match="directory"):
        plan(both, "o", labels=["cold", "a/b"])
