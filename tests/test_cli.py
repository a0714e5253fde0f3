"""`jaxal run` end to end on a tiny config, argument parsing, and the learning-curve plot."""

import json

import numpy as np
import pytest

from jaxal.cli import main, parse_options, parse_seeds
from jaxal.experiment.plots import plot_learning_curves
from jaxal.experiment.records import curve, load_records

TINY = ["run", "--widths", "16", "--initial", "10", "--budget", "5", "--rounds", "1", "--epochs", "2",
        "--batch-size", "16", "--candidates", "50", "--quiet"]


def test_run_writes_records_table_and_plot(tmp_path, capsys):
    out = tmp_path / "out"
    argv = TINY + ["--strategy", "entropy,random", "--seeds", "2", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| round | labeled | acc entropy | acc random |" in text.replace("  ", " ").replace("  ", " ")
    assert "learning_curve.png" in text
    for s in ("entropy", "random"):
        for k in (0, 1):
            recs = load_records(out / s / f"seed{k}")
            assert [r["n_labeled"] for r in recs] == [10, 15]
            assert recs[0]["strategy"] == s and recs[0]["seed"] == k
            assert json.load(open(out / s / f"seed{k}" / "config.json"))["candidates"] == 50
    png = (out / "learning_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    # the same --out again: refused, nothing touched; with --resume: nothing to do
    before = (out / "entropy" / "seed0" / "records.jsonl").read_text()
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert (out / "entropy" / "seed0" / "records.jsonl").read_text() == before


@pytest.mark.parametrize(
    "flag, value, valid",
    [("--strategy", "nope", "entropy"), ("--dataset", "nope", "digits"), ("--model", "nope", "mlp"),
     ("--start", "lukewarm", "shrink_perturb"), ("--loss", "hinge", "squared"), ("--seeds", "x", "count")],
)
def test_bad_names_exit_2_listing_valid_ones(tmp_path, capsys, flag, value, valid):
    assert main(TINY + [flag, value, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert value in err and valid in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_resume_needs_out(capsys):
    assert main(["run", "--resume"]) == 2
    assert "--out" in capsys.readouterr().err


def test_option_and_seed_parsing():
    got = parse_options(["k=3", "name=abc", "t=(1, 2)", "f=0.5", "b=True"], "--option")
    assert got == {"k": 3, "name": "abc", "t": (1, 2), "f": 0.5, "b": True}
    with pytest.raises(ValueError, match="--option"):
        parse_options(["novalue"], "--option")
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,4,7") == [0, 4, 7]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("1,1")


def test_curve_mean_and_std_over_seeds(tmp_path):
    runs = [
        [{"round": 0, "n_labeled": 10, "test_accuracy": 0.5}, {"round": 1, "n_labeled": 15, "test_accuracy": 0.7}],
        [{"round": 0, "n_labeled": 10, "test_accuracy": 0.3}, {"round": 1, "n_labeled": 15, "test_accuracy": 0.9}],
        [{"round": 0, "n_labeled": 10, "test_accuracy": 0.4}],  # still running: curve stops at round 0
    ]
    n, mean, std = curve(runs[:2])
    np.testing.assert_allclose(n, [10, 15])
    np.testing.assert_allclose(mean, [0.4, 0.8])
    np.testing.assert_allclose(std, [np.std([0.5, 0.3]), np.std([0.7, 0.9])])
    n, mean, _ = curve(runs)
    np.testing.assert_allclose(mean, [0.4])
    path = plot_learning_curves({"a": runs[:2], "b": runs[:1]}, tmp_path / "p.png")
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_load_records_names_a_bad_line(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"round": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"records.jsonl:2"):
        load_records(tmp_path)


def test_readme_python_examples_run():
    """Every ```python block of the README runs as written."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 2
    spaces = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        spaces.append(namespace)
    assert len(next(ns for ns in spaces if "idx" in ns)["idx"]) == 4
    assert len(set(next(ns for ns in spaces if "regression_picks" in ns)["regression_picks"].tolist())) == 10
    ntk_ns = next(ns for ns in spaces if "k_full" in ns)
    assert ntk_ns["k"].shape == (100, 20) and ntk_ns["k_full"].shape == (5, 3, 10, 10)


def test_per_strategy_options_go_only_to_their_strategy(tmp_path, capsys):
    from jaxal.cli import _options_for

    opts = {"batch_size": 64, "crc.group_size": 5}
    assert _options_for("crc", opts) == {"batch_size": 64, "group_size": 5}
    assert _options_for("entropy", opts) == {"batch_size": 64}
    # a plain option goes only to the strategies that take it (random takes no batch_size)
    assert _options_for("random", opts) == {}
    # an option the strategy does not take: refused before anything runs
    assert main(TINY + ["--strategy", "random", "--option", "batch_size=3", "--out", str(tmp_path / "o")]) == 2
    assert "batch_size" in capsys.readouterr().err
