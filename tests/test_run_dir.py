"""The run directory across processes: leftovers of a kill are removed on resume, the
lock is released when a run ends, and a run that fails its checks creates nothing."""

from __future__ import annotations

import os

import pytest

from jaxal.experiment.loop import LOCK_FILE, run
from test_troubleshooting import tiny_config


def test_resume_removes_temporary_files_a_kill_left(tmp_path):
    out = tmp_path / "run"
    first = run(tiny_config(tmp_path, rounds=1), out, progress=False)
    for name in (".tmp-abc123", ".tmp-x"):  # what write_atomic leaves when killed mid-write
        (out / name).write_bytes(b"partial")
    again = run(tiny_config(tmp_path, rounds=2), out, resume=True, progress=False)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    assert again[:2] == first


def test_the_lock_is_released_when_a_run_ends_even_by_an_error(tmp_path):
    out = tmp_path / "run"
    run(tiny_config(tmp_path, rounds=0), out, progress=False)
    assert (out / LOCK_FILE).exists()
    with pytest.raises(ValueError, match="already holds a run"):  # takes the lock, fails, lets it go
        run(tiny_config(tmp_path, rounds=0), out, progress=False)
    assert len(run(tiny_config(tmp_path, rounds=1), out, resume=True, progress=False)) == 2


def test_a_config_that_fails_its_checks_creates_no_directory(tmp_path):
    out = tmp_path / "deep" / "run"
    with pytest.raises(ValueError, match="must divide"):
        run(tiny_config(tmp_path, strategy="crc", strategy_options={"group_size": 3}), out, progress=False)
    assert not (tmp_path / "deep").exists()
