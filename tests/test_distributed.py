"""`jaxal run` over two ``jax.distributed`` processes on localhost (gloo CPU collectives).

Two processes of 2 forced CPU devices each (``--distributed``) against one process of 4
(``--mesh``), on a 3-round run of the embedded digits set:

- the chosen indices are the same in every round for every strategy;
- two processes and one process of 4 devices run the same partitioned programs: their
  records are identical (timings aside).

That a mesh picks what one device picks is checked where it is decided, without a
third whole run here: the strategies on 8 devices against 1 in ``tests/test_pool.py``
(entropy and coreset among them), data-parallel training against one device in
``tests/test_train_sharded.py``.

The two-process run goes through the failure path on the way: process 1 is killed right
after round 1's checkpoint, process 0 must stop by itself (non-zero, within about the
heartbeat timeout the test sets; in practice at once, from the failed collective), and
both processes rerun with ``--resume`` must end with the records of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from jaxal.cli import main, parse_bytes

def _gloo_available() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


needs_gloo = pytest.mark.skipif(not _gloo_available(),
                                reason="this jaxlib has no gloo CPU collectives (make_gloo_tcp_collectives)")

STRATEGIES = "entropy,coreset"
# The standard protocol (random head init, cross-entropy): the look-ahead protocol's zero
# head leaves entropy with exact ties, drawn differently by the one-device and mesh paths.
ARGS = ["run", "--protocol", "standard", "--widths", "16", "--initial", "10", "--budget", "5", "--rounds", "3",
        "--epochs", "3", "--batch-size", "16", "--candidates", "50", "--quiet", "--strategy", STRATEGIES]
HEARTBEAT = 20  # s: JAX's fallback for a process that hangs without dying (not needed for a killed one)
# The subprocesses share a compilation cache (the pairs compile the same programs); this
# process keeps it off (conftest), as enabling it is process-wide.
CACHE = {"dir": "off"}

# `python -m jaxal`, optionally killing this process (SIGKILL, no clean-up) right after
# round R of strategy S is checkpointed: KILL_AT="process:strategy:round".
_LAUNCH = textwrap.dedent(
    """
    import os, signal, sys
    kill_at = os.environ.get("KILL_AT")
    if kill_at:
        import jax
        import jaxal.experiment.loop as loop
        victim, strategy, at = kill_at.split(":")
        run = loop.run

        def killing_run(config, out_dir, **kw):
            def on_event(event, r):
                if (event == "checkpointed" and r == int(at) and config.strategy == strategy
                        and jax.process_index() == int(victim)):
                    os.kill(os.getpid(), signal.SIGKILL)
            return run(config, out_dir, on_event=on_event, **kw)

        loop.run = killing_run
    from jaxal.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str], devices: int, **env: str) -> subprocess.Popen:
    full = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                JAXAL_COMPILE_CACHE=CACHE["dir"], JAXAL_HEARTBEAT_TIMEOUT=str(HEARTBEAT), JAXAL_INIT_TIMEOUT="120")
    full.update(env)
    return subprocess.Popen([sys.executable, "-c", _LAUNCH, *argv], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _pair(argv: list[str], **env: str) -> list[subprocess.Popen]:
    """Two processes of 2 devices each, joined through a coordinator on localhost."""
    port = _free_port()
    return [_start(argv + ["--distributed"], 2, JAXAL_COORDINATOR=f"127.0.0.1:{port}", JAXAL_NUM_PROCESSES="2",
                   JAXAL_PROCESS_ID=str(i), **env) for i in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _records(out: str, strategies: str = STRATEGIES) -> dict[str, list[dict]]:
    recs = {}
    for s in strategies.split(","):
        with open(os.path.join(out, s, "seed0", "records.jsonl"), encoding="utf-8") as f:
            recs[s] = [json.loads(line) for line in f if line.strip()]
    return recs


def _untimed(record: dict) -> dict:
    """A record without its timings and stopping signals (compared by :func:`_same_signals`)."""
    return {k: v for k, v in record.items() if "seconds" not in k and k != "signals"}


def _same_signals(a: list[dict], b: list[dict]) -> None:
    """The stopping signals agree to float32 rounding: the stop-set predictions run on one
    device per process, whose CPU program differs in the last bits between the two set-ups
    (observed: 3e-10 relative on a mean of 1,000 float32 entropies)."""
    for ra, rb in zip(a, b, strict=True):
        assert ra["signals"].keys() == rb["signals"].keys()
        for k, v in ra["signals"].items():
            w = rb["signals"][k]
            assert (v is None) == (w is None) and (v is None or v == pytest.approx(w, rel=1e-6, abs=1e-9)), (k, v, w)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run two ways: two processes of 2 devices, one process of 4 (``--mesh``).

    The two-process run is interrupted: process 1 kills itself right after entropy's
    round-1 checkpoint, process 0 must stop by itself, and both are rerun with
    ``--resume`` (entropy continues from round 2; coreset, never started, runs whole).
    """
    base = tmp_path_factory.mktemp("distributed")
    CACHE["dir"] = str(base / "xla")
    two = base / "two"
    argv = ARGS + ["--out", str(two)]
    t0 = time.perf_counter()
    pair = _pair(argv, KILL_AT="1:entropy:1")
    stopped = None
    try:
        pair[1].wait(timeout=240)
        died = time.perf_counter()
        with contextlib.suppress(subprocess.TimeoutExpired):
            pair[0].wait(timeout=HEARTBEAT + 60)  # JAX stops it; the test does not wait forever
            stopped = time.perf_counter() - died
    finally:
        (survivor, _, survivor_err), (victim, _, _) = _finish(pair, timeout=10)
    kill = {"victim": victim, "survivor": survivor, "survivor_err": survivor_err, "stopped_after": stopped,
            "recorded": [r["round"] for r in _records(two, "entropy")["entropy"]],
            "coreset_started": (two / "coreset").exists()}
    t_kill = time.perf_counter() - t0
    resumed = _finish(_pair(argv + ["--resume"]))
    for rc, _, err in resumed:
        assert rc == 0, err[-3000:]
    said = [[line for line in o.splitlines() if line.strip() and not line.startswith("[Gloo]")] for _, o, _ in resumed]
    t_two = time.perf_counter() - t0
    ((rc, _, err),) = _finish([_start(ARGS + ["--mesh", "--out", str(base / "mesh")], 4)])
    assert rc == 0, err[-3000:]
    print(f"\ntwo processes: killed and stopped {t_kill:.1f} s, resumed and finished {t_two:.1f} s; "
          f"both runs {time.perf_counter() - t0:.1f} s; process 0 exited {survivor} "
          f"{stopped if stopped is None else round(stopped, 1)} s after process 1 was killed")
    return {"kill": kill, "said": said, "dirs": {k: base / k for k in ("mesh", "two")},
            "records": {k: _records(base / k) for k in ("mesh", "two")}}


@pytest.mark.slow
@needs_gloo
def test_two_processes_pick_what_one_process_and_one_device_pick(runs):
    # (one device: see the module docstring)
    mesh, two = (runs["records"][k] for k in ("mesh", "two"))
    for s in STRATEGIES.split(","):
        assert [len(r["chosen"]) for r in two[s]] == [10, 5, 5, 5]
        # the same picks in every round ...
        assert [r["chosen"] for r in two[s]] == [r["chosen"] for r in mesh[s]], s
        # ... as 2 processes x 2 devices and 1 process x 4 devices run the same programs: the same numbers
        assert [_untimed(r) for r in two[s]] == [_untimed(r) for r in mesh[s]], s
        _same_signals(two[s], mesh[s])
    # process 0 alone wrote the files and printed the table
    out = runs["dirs"]["two"]
    for s in STRATEGIES.split(","):
        assert sorted(os.listdir(out / s / "seed0")) == [".lock", "checkpoint.msgpack", "config.json", "records.jsonl"]
    assert (out / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    said = runs["said"]
    assert any("test accuracy per round" in line for line in said[0]) and said[1] == []


@pytest.mark.slow
@needs_gloo
def test_a_killed_process_stops_the_other_and_resume_continues(runs):
    kill = runs["kill"]
    assert kill["victim"] == -9  # SIGKILL, right after entropy's round-1 checkpoint
    assert kill["stopped_after"] is not None, f"process 0 still ran {HEARTBEAT + 60} s after process 1 died"
    err = kill["survivor_err"]
    # at once, as it was inside a collective with process 1 (JAX's heartbeat check would stop it later)
    assert kill["survivor"] == 1 and "another process has probably died" in err and "--resume" in err, err[-2000:]
    assert kill["stopped_after"] < 30
    assert kill["recorded"] == [0, 1] and not kill["coreset_started"]
    # the resumed run ends where an uninterrupted one does (one that runs the same programs on
    # 4 devices of one process; the uninterrupted two-process coreset run equals it too)
    two, mesh = runs["records"]["two"]["entropy"], runs["records"]["mesh"]["entropy"]
    assert [_untimed(r) for r in two] == [_untimed(r) for r in mesh]
    _same_signals(two, mesh)


@pytest.mark.slow
@needs_gloo
def test_processes_started_differently_fail_fast_naming_the_difference(tmp_path):
    port = _free_port()
    argv = ARGS + ["--out", str(tmp_path / "r"), "--distributed"]
    env = {"JAXAL_COORDINATOR": f"127.0.0.1:{port}", "JAXAL_NUM_PROCESSES": "2"}
    procs = [_start(argv + ["--budget", str(5 + i)], 1, JAXAL_PROCESS_ID=str(i), **env) for i in range(2)]
    for rc, _, err in _finish(procs, timeout=120):
        assert rc == 2, err[-2000:]
        assert "disagree" in err and "budget: 5 vs 6" in err, err[-2000:]
    assert not (tmp_path / "r").exists()


def test_setup_errors_name_the_setting(tmp_path, capsys):
    # a process that cannot reach its coordinator says so (instead of JAX aborting it)
    port = _free_port()
    p = _start(["run", "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1"],
               1, JAXAL_INIT_TIMEOUT="2")
    ((rc, _, err),) = _finish([p], timeout=60)
    assert rc == 1 and f"could not reach the coordinator at 127.0.0.1:{port}" in err, err[-2000:]
    from jaxal import distributed

    os.environ["JAXAL_NUM_PROCESSES"] = "two"
    try:
        with pytest.raises(ValueError, match="JAXAL_NUM_PROCESSES='two' is not an integer"):
            distributed.initialize()
    finally:
        del os.environ["JAXAL_NUM_PROCESSES"]
    with pytest.raises(ValueError, match="must be host:port"):
        distributed.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match=r"must be in \[0, 2\)"):
        distributed.initialize("localhost:1234", 2, 2)
    # one process: the exchanges are no-ops
    distributed.agree("x", {"a": 1})
    assert distributed.broadcast("y", 3) == 3
    distributed.barrier("z")
    with pytest.raises(KeyError), distributed.together("w"):
        raise KeyError("own errors pass through")
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("500MiB") == 500 << 20 and parse_bytes("1000") == 1000
    assert main(ARGS + ["--memory-bytes", "1M", "--compile-cache", "off", "--out", str(tmp_path / "o")]) == 2
    assert "--mesh" in capsys.readouterr().err


def test_memory_bytes_reaches_the_strategy(tmp_path, capsys):
    argv = ARGS[:-1] + ["entropy", "--rounds", "1", "--mesh", "--memory-bytes", "64", "--compile-cache", "off",
                              "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "but memory_bytes is 0.00 GiB (64)" in err, err
