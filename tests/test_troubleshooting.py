"""The README's troubleshooting table, row by row.

Each row of the table (between the ``troubleshooting-table`` marker and the next blank
line) names a case here by its id; the case makes the mistake the row describes and
returns what jaxal said. The test checks the quoted phrase is in it, so the README
cannot drift from the messages, and every row has a case and every case a row.
Command-line cases also check the exit code (2) and that no run directory was left.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxal import models as models_lib
from jaxal.cli import main, preflight_all
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.loop import run
from jaxal.strategies import select
from jaxal.training.train import TrainConfig, init_variables

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- troubleshooting-table"


def readme_rows() -> dict[str, str]:
    """``{id: quoted phrase}`` from the README's troubleshooting table."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER))
    rows = {}
    for line in lines[start + 3:]:  # the marker, the header, the separator
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        quoted = re.findall(r"`([^`]*)`", cells[2])
        assert len(quoted) == 1, f"row {cells[0]!r}: quote exactly one phrase in the third column"
        rows[cells[0]] = quoted[0]
    return rows


# --------------------------------------------------------------------------- fixtures of the cases


def tiny_npz(path: Path, **override) -> str:
    """40 training / 12 test examples of 4 features, 3 classes, with ``override`` arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(40, 4)).astype(np.float32),
        "y_train": np.arange(40) % 3,
        "x_test": rng.normal(size=(12, 4)).astype(np.float32),
        "y_test": np.arange(12) % 3,
    }
    arrays.update(override)
    np.savez(path, **arrays)
    return str(path)


def cli(tmp_path: Path, capsys, *argv: str) -> str:
    """Run ``jaxal run`` in ``tmp_path``; it must fail with code 2 and leave no run
    directory. Returns stderr."""
    before = set(os.listdir(tmp_path))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(["run", "--quiet", *argv])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert set(os.listdir(tmp_path)) == before, "a run that failed its checks left files behind"
    return err


def cli_npz(tmp_path, capsys, *argv, **arrays) -> str:
    data = tiny_npz(tmp_path / "data.npz", **arrays)
    return cli(tmp_path, capsys, "--dataset", data, "--model", "mlp", "--widths", "8", "--initial", "6",
               "--budget", "2", "--rounds", "1", *argv)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as e:
        fn(*args, **kwargs)
    return str(e.value)


_TINY = {}


def tiny_model(features: int = 4, classes: int = 3):
    key = (features, classes)
    if key not in _TINY:
        module = models_lib.create("mlp", classes, input_shape=(features,), widths=(8,))
        variables = init_variables(jax.random.key(0), module, np.zeros((1, features), np.float32))
        _TINY[key] = models_lib.as_model(module, variables)
    return _TINY[key]


def select_error(strategy: str = "entropy", key=None, *, model=None, pool_features: int = 4, **options) -> str:
    rng = np.random.default_rng(1)
    return error_of(select, strategy, jax.random.key(0) if key is None else key, model or tiny_model(),
                    x_labeled=rng.normal(size=(4, pool_features)).astype(np.float32), y_labeled=np.array([0, 1, 2, 0]),
                    x_pool=rng.normal(size=(16, pool_features)).astype(np.float32), budget=3, **options)


def tiny_config(tmp_path: Path, **kw) -> ExperimentConfig:
    args = dict(dataset=tiny_npz(tmp_path / "data.npz"), model="mlp", model_options={"widths": (8,)},
                strategy="random", initial_size=6, budget=2, rounds=2, train=TrainConfig(max_epochs=2))
    args.update(kw)
    return ExperimentConfig(**args)


# --------------------------------------------------------------------------- the cases


def case_unknown_strategy(tmp_path, capsys):
    return cli_npz(tmp_path, capsys, "--strategy", "entrpy")


def case_unknown_option(tmp_path, capsys):
    return select_error("coreset", chnk=5)


def case_option_type(tmp_path, capsys):
    return cli_npz(tmp_path, capsys, "--strategy", "crc", "--option", "crc.group_size=five")


def case_option_value(tmp_path, capsys):
    return select_error("coreset", chunk=0)


def case_crc_group_size(tmp_path, capsys):
    return cli(tmp_path, capsys, "--strategy", "crc", "--option", "crc.group_size=3", "--budget", "20")


def case_bald_deterministic(tmp_path, capsys):
    return cli_npz(tmp_path, capsys, "--strategy", "bald")


def case_model_option(tmp_path, capsys):
    return cli_npz(tmp_path, capsys, "--strategy", "random", "--model-option", "dropout=0.2")


def case_dataset_option(tmp_path, capsys):
    return cli(tmp_path, capsys, "--strategy", "random", "--dataset-option", "num_samples=100")


def case_budget_too_large(tmp_path, capsys):
    rng = np.random.default_rng(0)
    return cli_npz(tmp_path, capsys, "--strategy", "random", "--budget", "50", "--rounds", "5", "--initial", "10",
                   x_train=rng.normal(size=(210, 4)).astype(np.float32), y_train=np.arange(210) % 3)


def case_empty_test_set(tmp_path, capsys):
    return cli_npz(tmp_path, capsys, "--strategy", "random", x_test=np.zeros((0, 4), np.float32),
                   y_test=np.zeros(0, np.int64))


def case_string_labels(tmp_path, capsys):
    return cli_npz(tmp_path, capsys, "--strategy", "random",
                   y_train=np.array(["cat", "dog"] * 20), y_test=np.array(["cat", "dog"] * 6))


def case_nan_labels(tmp_path, capsys):
    y = (np.arange(40) % 3).astype(np.float64)
    y[3] = np.nan
    return cli_npz(tmp_path, capsys, "--strategy", "random", y_train=y)


def case_unseen_test_label(tmp_path, capsys):
    return cli_npz(tmp_path, capsys, "--strategy", "random", y_test=np.arange(12) % 4)


def case_label_gap(tmp_path, capsys):
    y = np.arange(40) % 3
    y[0] = 12
    return cli_npz(tmp_path, capsys, "--strategy", "random", y_train=y)


def case_labels_vs_num_classes(tmp_path, capsys):
    y = np.arange(40) % 3
    y[0] = 12
    return cli_npz(tmp_path, capsys, "--strategy", "random", "--dataset-option", "num_classes=10", y_train=y)


def case_not_an_npz(tmp_path, capsys):
    (tmp_path / "data.npz").write_text("x_train,y_train\n0.5,1\n")
    return cli(tmp_path, capsys, "--dataset", str(tmp_path / "data.npz"), "--strategy", "random")


def case_num_classes_mismatch(tmp_path, capsys):
    return select_error("entropy", num_classes=5)


def case_int_key(tmp_path, capsys):
    return select_error("entropy", key=0)


def case_feature_mismatch(tmp_path, capsys):
    return select_error("entropy", model=tiny_model(features=8), pool_features=5)


def case_run_exists(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "records.jsonl", "checkpoint.msgpack"):
        (out / name).write_text("")
    return error_of(run, tiny_config(tmp_path), out, progress=False)


def case_resume_missing(tmp_path, capsys):
    return cli_npz(tmp_path, capsys, "--strategy", "random", "--resume", "--out", "nothere")


def case_rounds_lowered(tmp_path, capsys):
    out = tmp_path / "run"
    records = run(tiny_config(tmp_path), out, progress=False)
    assert [r["round"] for r in records] == [0, 1, 2]
    message = error_of(run, tiny_config(tmp_path, rounds=1), out, resume=True, progress=False)
    assert len(run(tiny_config(tmp_path, rounds=2), out, resume=True, progress=False)) == 3  # nothing was lost
    return message


def case_run_locked(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running jaxal process holds
        os.write(fd, b"4242")
        message = error_of(run, tiny_config(tmp_path), out, progress=False)
    finally:
        os.close(fd)
    assert "pid 4242" in message
    assert sorted(os.listdir(out)) == [".lock"], "the locked-out process wrote into the run"
    return message


def case_candidates_over_pool(tmp_path, capsys):
    notes = preflight_all([ExperimentConfig(candidates=5000)], str(tmp_path / "out"), False, {})
    assert any("1327 unlabeled examples" in n for n in notes), notes
    return "\n".join(notes)


CASES = {name[len("case_"):].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("case_")}
ROWS = readme_rows()


def test_every_row_has_a_case_and_every_case_a_row():
    assert sorted(ROWS) == sorted(CASES)


@pytest.mark.parametrize("row", sorted(ROWS))
def test_message_says_what_the_readme_quotes(row, tmp_path, capsys):
    said = CASES[row](tmp_path, capsys)
    assert ROWS[row] in said, f"README quotes {ROWS[row]!r}; jaxal said {said!r}"
