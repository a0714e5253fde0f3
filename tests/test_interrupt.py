"""Ctrl-C: acted on at safe points, exit code 130, one message, and a resume that ends
where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jaxal import interrupt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from interrupt_stress import wait_for_jax_loading  # noqa: E402 - the stress script's own start-up probe

RUN = ["run", "--strategy", "entropy", "--widths", "8", "--initial", "10", "--budget", "5", "--rounds", "5",
       "--epochs", "40", "--candidates", "60", "--quiet"]


def test_first_sigint_waits_for_a_safe_point():
    with interrupt.deferred():
        os.kill(os.getpid(), signal.SIGINT)  # handled by the deferring handler: no exception here
        time.sleep(0.01)
        assert interrupt.requested()
        with pytest.raises(interrupt.Interrupted):
            interrupt.check()
        interrupt.check()  # acted on once
    assert not interrupt.requested()


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _cli(tmp_path, out, *extra):
    cache = str(tmp_path / "xla")  # shared: later processes start warm
    return [sys.executable, "-m", "jaxal", *RUN, "--compile-cache", cache, "--out", str(out), *extra]


@pytest.mark.parametrize("after_records", [2])
def test_ctrl_c_exits_130_once_and_resumes_to_the_same_records(tmp_path, after_records):
    reference = tmp_path / "reference"
    done = subprocess.run(_cli(tmp_path, reference), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    out = tmp_path / "interrupted"
    records = out / "entropy" / "seed0" / "records.jsonl"
    proc = subprocess.Popen(_cli(tmp_path, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= after_records:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err[-2000:]  # never a crash (a negative code is a signal)
    assert err.count("interrupted; rerun") == 1, err

    resumed = subprocess.run(_cli(tmp_path, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got, want = _records(records), _records(reference / "entropy" / "seed0" / "records.jsonl")
    assert [r["chosen"] for r in got] == [r["chosen"] for r in want]
    assert [r["test_accuracy"] for r in got] == [r["test_accuracy"] for r in want]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_ctrl_c_during_start_up_exits_130_with_one_line(tmp_path, delay):
    """While Python loads JAX and the data (before any run exists): exit 130, one line,
    no traceback, and no run directory to resume."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli(tmp_path, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_jax_loading(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.count("interrupted") == 1 and "Traceback" not in err, err


def test_import_jaxal_is_lazy():
    """``import jaxal`` loads no JAX (so the program handles Ctrl-C from its first
    milliseconds); attributes load on first use."""
    code = ("import sys, jaxal; assert 'jax' not in sys.modules, 'jax imported'; "
            "assert callable(jaxal.select) and 'entropy' in jaxal.names(); assert 'jax' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
